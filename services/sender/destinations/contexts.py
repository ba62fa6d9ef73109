"""Which presentation contexts a DICOM destination proposes, and what a refusal means.

Shared by both data paths. Every SOP class is proposed twice: in the file's own transfer
syntax, and uncompressed; a peer that accepts only the uncompressed context gets an
uncompressed copy (NeedsTranscode, handled by DicomDestination).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from sendqueue.services.sender.destinations.instance import InstanceMeta
from sendqueue.services.sender.destinations.transcode import UNCOMPRESSED
from sendqueue.shared.errors import PermanentError

#: (SOP class, transfer syntax) pairs proposed per association; each SOP class among them
#: also gets an uncompressed context, and DICOM allows 128 contexts in all.
MAX_CONTEXTS = 64
MAX_PROPOSED = 127

#: The Verification SOP class (C-ECHO).
VERIFICATION = "1.2.840.10008.1.1"

Context = tuple[str, str]  # (SOP class UID, transfer syntax UID)


class NeedsTranscode(PermanentError):
    """The peer takes this SOP class only in `target`: send an uncompressed copy.

    Handled by DicomDestination.send; it only escapes (and parks the job) by mistake.
    """

    reason_class = "no-presentation-context"

    def __init__(self, message: str, meta: InstanceMeta, target: str) -> None:
        super().__init__(message)
        self.meta = meta
        self.target = target


class KnownContexts:
    """The contexts recently needed, most recent first (shared by a destination's threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: OrderedDict[Context, None] = OrderedDict()

    def remember(self, wanted: Context) -> list[Context]:
        """Contexts to propose: this one first, then recently seen ones."""
        with self._lock:
            self._known[wanted] = None
            self._known.move_to_end(wanted, last=False)
            while len(self._known) > MAX_CONTEXTS:
                self._known.popitem()
            return list(self._known)


def proposals(contexts: list[Context]) -> list[tuple[str, list[str]]]:
    """Each pair as its own context, then per SOP class one uncompressed fallback context.

    The fallbacks of the first (most wanted) pair come right after it, so they survive
    the 128-context limit; the rest are cut at MAX_PROPOSED.
    """
    proposed: list[tuple[str, list[str]]] = []
    fallbacks: dict[str, tuple[str, list[str]]] = {}
    for sop_class, _ in contexts:
        fallbacks.setdefault(sop_class, (sop_class, list(UNCOMPRESSED)))
    if contexts:
        first = contexts[0][0]
        proposed += [(first, [contexts[0][1]]), fallbacks.pop(first)]
    proposed += [(sop, [ts]) for sop, ts in contexts[1:]]
    proposed += list(fallbacks.values())
    return proposed[:MAX_PROPOSED]


def refused_error(name: str, accepted: set[Context], meta: InstanceMeta) -> PermanentError:
    """NeedsTranscode when an uncompressed context for the SOP class was accepted."""
    for target in UNCOMPRESSED:
        if (meta.sop_class_uid, target) in accepted:
            return NeedsTranscode(
                f"{name} accepts SOP class {meta.sop_class_uid} only as {target}", meta, target
            )
    return PermanentError(
        f"{name} does not accept SOP class {meta.sop_class_uid} in transfer syntax "
        f"{meta.transfer_syntax_uid} nor uncompressed (no presentation context accepted)",
        reason_class="no-presentation-context",
    )
