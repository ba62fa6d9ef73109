"""What a C-STORE response status means for the job: one table, one function.

The mapping of codes to deliver / retry / park is sendqueue's policy (PS3.4 B.2.3 and
PS3.7 C.4.2 name the codes; they do not say what a forwarder should do about them).
"""

from __future__ import annotations

import enum
from typing import Literal

from sendqueue.shared.errors import PermanentError, TransientError


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


#: What a destination's `warnings` key asks: count a warning as delivered, or retry it.
WarningsPolicy = Literal["delivered", "retry"]

#: The warning statuses (PS3.7 C.4.2 and PS3.4 B.2.3): the peer stored the instance, but
#: not exactly as sent. Delivered, unless the destination says `warnings = "retry"`.
WARNINGS: dict[int, str] = {
    0x0001: "Warning: requested optional attributes not supported",
    0x0107: "Warning: attribute list error",
    0x0116: "Warning: attribute value out of range",
    0xB000: "Warning: coercion of data elements",
    0xB006: "Warning: elements discarded",
    0xB007: "Warning: data set does not match SOP class",
}

#: Exact codes first; ranges below. Warnings mean the peer stored the instance.
_EXACT: dict[int, tuple[Outcome, str]] = {
    0x0000: (Outcome.DELIVERED, "Success"),
    **{code: (Outcome.DELIVERED, text) for code, text in WARNINGS.items()},
    # The peer already has this SOP instance: what we wanted.
    0x0111: (Outcome.DELIVERED, "Duplicate SOP instance (already stored)"),
    0x0110: (Outcome.TRANSIENT, "Processing failure"),
    0x0213: (Outcome.TRANSIENT, "Resource limitation"),
    0x0117: (Outcome.PERMANENT, "Invalid SOP instance"),
    0x0122: (Outcome.PERMANENT, "SOP class not supported"),
    0x0124: (Outcome.PERMANENT, "Not authorized"),
    0x0210: (Outcome.PERMANENT, "Duplicate invocation"),
    0x0211: (Outcome.PERMANENT, "Unrecognized operation"),
    0x0212: (Outcome.PERMANENT, "Mistyped argument"),
}

_RANGES: tuple[tuple[int, int, Outcome, str, str], ...] = (
    (0xA700, 0xA7FF, Outcome.TRANSIENT, "Refused: out of resources", "a7xx"),
    (0xA900, 0xA9FF, Outcome.PERMANENT, "Error: data set does not match SOP class", "a9xx"),
    (0xC000, 0xCFFF, Outcome.PERMANENT, "Error: cannot understand", "cxxx"),
    (0xB000, 0xBFFF, Outcome.DELIVERED, "Warning", "bxxx"),
)


def classify(status: int) -> tuple[Outcome, str, str]:
    """(outcome, description, reason class) for a C-STORE status code."""
    if status in _EXACT:
        outcome, text = _EXACT[status]
        return outcome, text, f"dimse-{status:04x}"
    for low, high, outcome, text, group in _RANGES:
        if low <= status <= high:
            return outcome, text, f"dimse-{group}"
    # Unknown failure codes: retrying an unknown refusal forever helps nobody.
    return Outcome.PERMANENT, "Unknown status", "dimse-other"


def is_warning(status: int) -> bool:
    """A warning: stored, but not exactly as sent (0x0111, already stored, is none)."""
    return status in WARNINGS or 0xB000 <= status <= 0xBFFF


def raise_for_status(
    status: int,
    sop_instance_uid: str,
    warnings: WarningsPolicy = "delivered",
    detail: str = "",
) -> str:
    """Returns the description when delivered; raises Transient/PermanentError otherwise.

    With `warnings = "retry"` a warning is a transient failure: retried, then parked with
    the peer's status once the attempts are used up. detail: what the peer said beyond
    the code (error comment, offending element)."""
    outcome, text, reason_class = classify(status)
    if outcome is Outcome.DELIVERED and warnings == "retry" and is_warning(status):
        raise TransientError(
            f"C-STORE of {sop_instance_uid} answered a warning: DIMSE status 0x{status:04X}"
            f' ({text}); this destination retries warnings (warnings = "retry")',
            reason_class=reason_class,
        )
    if outcome is Outcome.DELIVERED:
        return f"{text} ({detail})" if detail and status != 0 else text
    message = f"C-STORE of {sop_instance_uid} failed: DIMSE status 0x{status:04X} ({text})"
    if detail:
        message += f": {detail}"
    if outcome is Outcome.TRANSIENT:
        raise TransientError(message, reason_class=reason_class)
    raise PermanentError(message, reason_class=reason_class)
