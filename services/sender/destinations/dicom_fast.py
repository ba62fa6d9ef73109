"""data_path = "fast" (the default): C-STORE over associations this module owns (scu/).

Each worker thread owns one association and reuses it across instances, re-associating
after a failure, an idle period, or when an instance needs a presentation context the
current one lacks. The data set goes from the spool file (or memory) to the socket
without passing through Python objects per PDU, and the worker thread reads the
C-STORE-RSP itself: no other thread ever touches the socket, except ``close_all``,
which interrupts a send that is still running at shutdown.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.uid import DeflatedExplicitVRLittleEndian

from sendqueue.services.sender.destinations.contexts import (
    VERIFICATION,
    Context,
    KnownContexts,
    proposals,
    refused_error,
)
from sendqueue.services.sender.destinations.dimse_status import raise_for_status
from sendqueue.services.sender.destinations.instance import InstanceMeta
from sendqueue.services.sender.destinations.scu.association import (
    Association,
    Lost,
    Peer,
    Rejected,
    Unreachable,
)
from sendqueue.services.sender.destinations.scu.part10 import HEAD_SIZE, read_part10
from sendqueue.services.sender.destinations.scu.payload import (
    FilePayload,
    MemoryPayload,
    Payload,
)
from sendqueue.shared.config import DicomDestinationConfig
from sendqueue.shared.errors import (
    AssociationRejected,
    DestinationUnavailable,
    TransientError,
)

log = logging.getLogger(__name__)

#: A failure this soon on a reused association is probably an idle close by the peer.
_STALE_FAILURE_SECONDS = 2.0
#: Longest wait for the peer to confirm a release before the association is aborted.
_RELEASE_WAIT = 10.0
_IMPLICIT_VR = "1.2.840.10008.1.2"


@dataclass
class _Link:
    """The association one worker thread owns; `busy` is held while it is in use."""

    assoc: Association | None = None
    refused: set[Context] = field(default_factory=set)
    last_used: float = 0.0
    busy: threading.Lock = field(default_factory=threading.Lock)


class FastPath:
    def __init__(
        self, config: DicomDestinationConfig, tls: ssl.SSLContext | None, known: KnownContexts
    ) -> None:
        self.config = config
        self.name = config.name
        self._known = known
        tls_config = config.tls
        self._peer = Peer(
            host=config.host,
            port=config.port,
            called_aet=config.called_aet,
            calling_aet=config.calling_aet,
            connect_timeout=config.connect_timeout,
            acse_timeout=config.acse_timeout,
            dimse_timeout=config.dimse_timeout,
            tls=tls,
            server_name=(tls_config.server_name if tls_config else "") or config.host,
        )
        self._local = threading.local()
        self._lock = threading.Lock()
        self._links: list[_Link] = []

    def connections_open(self) -> int:
        with self._lock:
            return sum(1 for link in self._links if link.assoc and link.assoc.established)

    # -- sending (worker threads) -------------------------------------------------
    def send_blocking(self, path: Path) -> str:
        """C-STORE one Part-10 file; returns the status description or raises."""
        with open(path, "rb") as file:
            head = file.read(HEAD_SIZE)
        part10 = read_part10(head, lambda: str(path))
        meta = InstanceMeta(
            part10.sop_class_uid,
            part10.sop_instance_uid,
            part10.transfer_syntax_uid,
            part10.dataset_offset,
        )
        payload = FilePayload(path, part10.dataset_offset)
        if meta.transfer_syntax_uid == DeflatedExplicitVRLittleEndian and payload.length % 2:
            # Fragments must be even (DCMTK aborts on an odd one): one NULL after the
            # deflate stream is the standard padding, and inflaters ignore it.
            payload = FilePayload(path, part10.dataset_offset, pad=True)
        return self.send_payload(meta, payload)

    def send_bytes(self, data: bytearray) -> str:
        """C-STORE a Part-10 file held in memory (the worker downloaded it there)."""
        part10 = read_part10(bytes(data[:HEAD_SIZE]), lambda: bytes(data))
        meta = InstanceMeta(
            part10.sop_class_uid,
            part10.sop_instance_uid,
            part10.transfer_syntax_uid,
            part10.dataset_offset,
        )
        data_set = memoryview(data)[part10.dataset_offset :]
        odd_deflated = meta.transfer_syntax_uid == DeflatedExplicitVRLittleEndian and (
            len(data_set) % 2
        )
        return self.send_payload(meta, MemoryPayload(data_set, pad=bool(odd_deflated)))

    def send_payload(self, meta: InstanceMeta, payload: Payload) -> str:
        link = self._link()
        with link.busy:
            return self._store(link, meta, payload)

    def _store(self, link: _Link, meta: InstanceMeta, payload: Payload) -> str:
        for attempt in range(2):
            reused = self._ensure_association(link, meta)
            assoc = link.assoc
            assert assoc is not None
            started = time.monotonic()
            try:
                response = assoc.store(
                    meta.sop_class_uid, meta.sop_instance_uid, meta.transfer_syntax_uid, payload
                )
            except Lost as lost:
                link.assoc = None
                quick = time.monotonic() - started < _STALE_FAILURE_SECONDS
                if attempt == 0 and reused and quick and not lost.timed_out:
                    log.info(
                        "%s: reused association failed at once (%s); retrying", self.name, lost
                    )
                    continue
                raise _no_response(meta, lost, self.config.dimse_timeout) from None
            link.last_used = time.monotonic()
            return raise_for_status(
                response.status,
                meta.sop_instance_uid,
                self.config.warnings,
                detail=response.detail(),
            )
        raise AssertionError("the second attempt returns or raises")

    def _link(self) -> _Link:
        link: _Link | None = getattr(self._local, "link", None)
        if link is None:
            link = _Link()
            self._local.link = link
            with self._lock:
                self._links.append(link)
        return link

    def _ensure_association(self, link: _Link, meta: InstanceMeta) -> bool:
        """Make link hold an association accepting meta's context; True if reused."""
        wanted = (meta.sop_class_uid, meta.transfer_syntax_uid)
        idle = time.monotonic() - link.last_used
        if link.assoc and (not link.assoc.established or idle > self.config.idle_timeout):
            self._release(link)
        if link.assoc and wanted in link.assoc.contexts:
            return True
        if link.assoc and wanted in link.refused:
            raise refused_error(self.name, set(link.assoc.contexts), meta)
        self._release(link)
        link.assoc = self._open(proposals(self._known.remember(wanted)))
        link.refused = set()
        link.last_used = time.monotonic()
        if wanted not in link.assoc.contexts:
            link.refused.add(wanted)
            raise refused_error(self.name, set(link.assoc.contexts), meta)
        return False

    def _open(self, proposed: list[tuple[str, list[str]]]) -> Association:
        where = self._peer.where()
        try:
            return Association.open(self._peer, proposed)
        except Rejected as rejected:
            if rejected.permanent:
                # The peer is up and says no for good (e.g. our AE title is not known to it):
                # the jobs are parked with its answer, not retried or held while probing.
                raise AssociationRejected(
                    f"association to {where} rejected ({rejected})",
                    reason_class="association-rejected-permanent",
                ) from None
            raise DestinationUnavailable(
                f"association to {where} rejected ({rejected})",
                reason_class="association-rejected",
            ) from None
        except Unreachable as why:
            if why.tls_failed:
                raise DestinationUnavailable(f"{where}: {why}", reason_class="tls-failed") from None
            raise DestinationUnavailable(
                f"cannot open an association to {where}: {why}", reason_class="unreachable"
            ) from None

    def _release(self, link: _Link) -> None:
        assoc, link.assoc = link.assoc, None
        link.refused = set()
        if assoc is not None:
            assoc.release(min(self.config.acse_timeout, _RELEASE_WAIT))

    # -- probing, idling, closing -------------------------------------------------
    def echo_blocking(self) -> None:
        """C-ECHO on a fresh association; DestinationUnavailable if it fails, and
        AssociationRejected if the peer rejects us for good."""
        assoc = self._open([(VERIFICATION, [_IMPLICIT_VR])])
        try:
            if (VERIFICATION, _IMPLICIT_VR) not in assoc.contexts:
                return  # Verification not offered, but the peer accepted an association
            try:
                status = assoc.echo().status
            except Lost as lost:
                raise DestinationUnavailable(f"{self.name}: C-ECHO failed: {lost}") from None
        finally:
            assoc.release(min(self.config.acse_timeout, _RELEASE_WAIT))
        if status != 0:
            raise DestinationUnavailable(f"{self.name} answered C-ECHO with status 0x{status:04X}")

    def release_idle(self) -> None:
        """Release associations idle longer than idle_timeout (their threads wait for work)."""
        now = time.monotonic()
        for link in self._all_links():
            idle = link.assoc is not None and now - link.last_used > self.config.idle_timeout
            if idle and link.busy.acquire(blocking=False):
                try:
                    self._release(link)
                finally:
                    link.busy.release()

    def close_all(self) -> None:
        """Release idle associations; interrupt the ones still sending (shutdown)."""
        for link in self._all_links():
            if link.busy.acquire(blocking=False):
                try:
                    self._release(link)
                finally:
                    link.busy.release()
            elif link.assoc is not None:
                link.assoc.interrupt()

    def _all_links(self) -> list[_Link]:
        with self._lock:
            return list(self._links)


def _no_response(meta: InstanceMeta, lost: Lost, dimse_timeout: float) -> TransientError:
    # The peer may have stored it anyway: a retry is then a harmless duplicate.
    why = (
        f"no valid answer within dimse_timeout ({dimse_timeout:g}s)"
        if lost.timed_out
        else f"the association was aborted or closed during the transfer ({lost})"
    )
    return TransientError(
        f"no C-STORE response for {meta.sop_instance_uid}: {why}", reason_class="no-response"
    )
