"""C-STORE to a DICOM destination with pynetdicom: the only module that touches it.

pynetdicom blocks, so every call runs in this destination's own thread pool; each worker
thread owns one association and reuses it across many instances (re-associating after
an abort, an idle period, or when an instance needs a presentation context the current
association lacks). Files are sent in chunks straight from the spool file.

Every SOP class is proposed twice: in the file's own transfer syntax, and uncompressed.
A peer that accepts only the uncompressed context gets an uncompressed copy made by
transcode.py (unless the destination says transcode = false: then the job is parked
with that reason). With a [tls] table the association runs over DICOM TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.uid import UID
from pynetdicom import AE, _config
from pynetdicom.association import Association

from sendqueue.services.sender.destinations.dimse_status import raise_for_status
from sendqueue.services.sender.destinations.instance import (
    InstanceMeta,
    pad_deflated_data_set,
    read_meta,
)
from sendqueue.services.sender.destinations.tls import client_context, handshake_error
from sendqueue.services.sender.destinations.transcode import UNCOMPRESSED, Transcoder
from sendqueue.shared.config import DicomDestinationConfig
from sendqueue.shared.errors import (
    AssociationRejected,
    DestinationUnavailable,
    PermanentError,
    TransientError,
)

__all__ = ["DicomDestination", "InstanceMeta", "NeedsTranscode", "read_meta"]

log = logging.getLogger(__name__)

# Send the dataset from the file in PDU-sized chunks instead of loading it whole.
_config.STORE_SEND_CHUNKED_DATASET = True

#: (SOP class, transfer syntax) pairs proposed per association; each SOP class among them
#: also gets an uncompressed context, and DICOM allows 128 contexts in all.
_MAX_CONTEXTS = 64
_MAX_PROPOSED = 127
#: P-DATA PDUs allowed to wait in pynetdicom's send queue: without a bound it queues a
#: whole file in memory when the peer reads slower than we read the disk.
_MAX_QUEUED_PDUS = 8
#: A failure this soon on a reused association is probably an idle close by the peer.
_STALE_FAILURE_SECONDS = 2.0

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


@dataclass
class _Link:
    """The association one worker thread owns."""

    assoc: Association | None = None
    accepted: set[Context] = field(default_factory=set)
    refused: set[Context] = field(default_factory=set)
    last_used: float = 0.0


class DicomDestination:
    protocol = "dicom"

    def __init__(
        self, config: DicomDestinationConfig, transcoder: Transcoder | None = None
    ) -> None:
        self.config = config
        self.name = config.name
        self._transcoder = transcoder or Transcoder(None)
        self._tls: ssl.SSLContext | None = None
        if config.tls is not None:
            self._tls = client_context(config.tls, config.name)
        self._pool = ThreadPoolExecutor(
            max_workers=config.concurrency, thread_name_prefix=f"sq-dicom-{config.name}"
        )
        self._local = threading.local()
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self._known: OrderedDict[Context, None] = OrderedDict()

    async def send(self, path: Path) -> str:
        try:
            return await self._in_pool(path)
        except NeedsTranscode as need:
            return await self._send_transcoded(path, need)

    async def _in_pool(self, path: Path) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.send_blocking, path)

    async def _send_transcoded(self, path: Path, need: NeedsTranscode) -> str:
        meta, target = need.meta, UID(need.target)
        if not self.config.transcode:
            raise PermanentError(
                f"{self.name} accepts SOP class {meta.sop_class_uid} only as {target.name}, not "
                f"{UID(meta.transfer_syntax_uid).name}, and transcode = false for it",
                reason_class="transcode-forbidden",
            )
        copy, by = await self._transcoder.transcode(path, meta, target)
        try:
            detail = await self._in_pool(copy)
        finally:
            copy.unlink(missing_ok=True)
        log.info(
            "%s: sent %s transcoded to %s by %s", self.name, meta.sop_instance_uid, target.name, by
        )
        return f"{detail} (transcoded to {target.name} by {by})"

    async def probe(self) -> None:
        await asyncio.to_thread(self.echo_blocking)

    def connections_open(self) -> int:
        with self._lock:
            return sum(1 for link in self._links if link.assoc and link.assoc.is_established)

    # -- sending (worker threads) -------------------------------------------------
    def send_blocking(self, path: Path) -> str:
        """C-STORE one file; returns the status description or raises SendQueueError."""
        meta = read_meta(path)
        pad_deflated_data_set(path, meta)
        link = self._link()
        for _ in range(2):
            reused = self._ensure_association(link, meta)
            started = time.monotonic()
            assert link.assoc is not None
            try:
                response = link.assoc.send_c_store(path)
            except (OSError, RuntimeError) as exc:
                self._drop(link)
                raise TransientError(
                    f"C-STORE of {meta.sop_instance_uid} interrupted: {exc!r}",
                    reason_class="connection-lost",
                ) from None
            link.last_used = time.monotonic()
            if "Status" in response:
                status = int(response.Status)
                return raise_for_status(status, meta.sop_instance_uid, self.config.warnings)
            # Well before the DIMSE timeout: the peer aborted or closed the association.
            aborted = link.last_used - started < 0.9 * self.config.dimse_timeout
            self._drop(link)
            if not (reused and link.last_used - started < _STALE_FAILURE_SECONDS):
                break
            log.info("%s: reused association failed at once; retrying on a new one", self.name)
        # The peer may have stored it anyway: a retry is then a harmless duplicate.
        why = (
            "the association was aborted or closed during the transfer"
            if aborted
            else f"no valid answer within dimse_timeout ({self.config.dimse_timeout:g}s)"
        )
        raise TransientError(
            f"no C-STORE response for {meta.sop_instance_uid}: {why}",
            reason_class="no-response",
        )

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
        if link.assoc and (not link.assoc.is_established or idle > self.config.idle_timeout):
            self._drop(link)
        if link.assoc and wanted in link.accepted:
            return True
        if link.assoc and wanted in link.refused:
            raise self._refused_error(link, meta)
        self._drop(link)
        link.assoc = self._associate(self._remember(wanted))
        accepted = link.assoc.accepted_contexts
        link.accepted = {(str(c.abstract_syntax), str(c.transfer_syntax[0])) for c in accepted}
        link.refused = set()
        link.last_used = time.monotonic()
        if wanted not in link.accepted:
            link.refused.add(wanted)
            raise self._refused_error(link, meta)
        return False

    def _refused_error(self, link: _Link, meta: InstanceMeta) -> PermanentError:
        """NeedsTranscode when an uncompressed context for the SOP class was accepted."""
        for target in UNCOMPRESSED:
            if (meta.sop_class_uid, target) in link.accepted:
                return NeedsTranscode(
                    f"{self.name} accepts SOP class {meta.sop_class_uid} only as {target}",
                    meta,
                    target,
                )
        return PermanentError(
            f"{self.name} does not accept SOP class {meta.sop_class_uid} in transfer syntax "
            f"{meta.transfer_syntax_uid} nor uncompressed (no presentation context accepted)",
            reason_class="no-presentation-context",
        )

    def _remember(self, wanted: Context) -> list[Context]:
        """Contexts to propose: this one first, then recently seen ones."""
        with self._lock:
            self._known[wanted] = None
            self._known.move_to_end(wanted, last=False)
            while len(self._known) > _MAX_CONTEXTS:
                self._known.popitem()
            return list(self._known)

    def _associate(self, contexts: list[Context]) -> Association:
        ae = self._new_ae()
        for sop_class, syntaxes in _proposals(contexts):
            ae.add_requested_context(sop_class, syntaxes)
        return self._open(ae)

    def _new_ae(self) -> AE:
        cfg = self.config
        ae = AE(ae_title=cfg.calling_aet)
        ae.connection_timeout = cfg.connect_timeout
        ae.acse_timeout = cfg.acse_timeout
        ae.dimse_timeout = cfg.dimse_timeout
        # We release idle associations ourselves; this only catches a silent peer.
        ae.network_timeout = max(cfg.idle_timeout, cfg.dimse_timeout) + 30
        return ae

    def _open(self, ae: AE) -> Association:
        cfg = self.config
        tls_args = None
        if self._tls is not None:
            tls_args = (self._tls, self._server_name())
        assoc = ae.associate(cfg.host, cfg.port, ae_title=cfg.called_aet, tls_args=tls_args)
        if assoc.is_established:
            _tune(assoc)
            return assoc
        where = f"{cfg.called_aet}@{cfg.host}:{cfg.port}" + (" over TLS" if self._tls else "")
        if assoc.is_rejected and _rejected_permanently(assoc):
            # The peer is up and says no for good (e.g. our AE title is not known to it):
            # the jobs are parked with its answer, not retried or held while probing.
            raise AssociationRejected(
                f"association to {where} rejected ({_rejection(assoc)})",
                reason_class="association-rejected-permanent",
            )
        if assoc.is_rejected:
            raise DestinationUnavailable(
                f"association to {where} rejected ({_rejection(assoc)})",
                reason_class="association-rejected",
            )
        if self._tls is not None:
            why = handshake_error(
                self._tls, cfg.host, cfg.port, self._server_name(), cfg.connect_timeout
            )
            if why:
                raise DestinationUnavailable(f"{where}: {why}", reason_class="tls-failed")
        raise DestinationUnavailable(
            f"cannot open an association to {where} (connection refused, timed out or aborted)",
            reason_class="unreachable",
        )

    def _server_name(self) -> str:
        tls = self.config.tls
        return (tls.server_name if tls else "") or self.config.host

    def _drop(self, link: _Link) -> None:
        assoc, link.assoc = link.assoc, None
        link.accepted = set()
        link.refused = set()
        if assoc is None:
            return
        try:
            if assoc.is_established:
                assoc.release()
            else:
                assoc.abort()
        except Exception as exc:
            log.debug("%s: closing association: %r", self.name, exc)

    # -- probing and closing ------------------------------------------------------
    def echo_blocking(self) -> None:
        """C-ECHO on a fresh association; DestinationUnavailable if it fails, and
        AssociationRejected if the peer rejects us for good."""
        ae = self._new_ae()
        ae.add_requested_context(VERIFICATION)
        assoc = self._open(ae)
        try:
            response = assoc.send_c_echo()
        except ValueError:
            return  # Verification not offered, but the peer accepted an association
        finally:
            if assoc.is_established:
                assoc.release()
        if "Status" not in response or int(response.Status) != 0:
            raise DestinationUnavailable(f"{self.name} answered C-ECHO with failure")

    async def close(self) -> None:
        await asyncio.to_thread(self._close_all)
        await self._transcoder.close()

    def _close_all(self) -> None:
        with self._lock:
            links = list(self._links)
        for link in links:
            self._drop(link)
        self._pool.shutdown(wait=False, cancel_futures=True)


def _proposals(contexts: list[Context]) -> list[tuple[str, list[str]]]:
    """Each pair as its own context, then per SOP class one uncompressed fallback context.

    The fallbacks of the first (most wanted) pair come right after it, so they survive
    the 128-context limit; the rest are cut at _MAX_PROPOSED.
    """
    proposals: list[tuple[str, list[str]]] = []
    fallbacks: dict[str, tuple[str, list[str]]] = {}
    for sop_class, _ in contexts:
        fallbacks.setdefault(sop_class, (sop_class, list(UNCOMPRESSED)))
    if contexts:
        first = contexts[0][0]
        proposals += [(first, [contexts[0][1]]), fallbacks.pop(first)]
    proposals += [(sop, [ts]) for sop, ts in contexts[1:]]
    proposals += list(fallbacks.values())
    return proposals[:_MAX_PROPOSED]


def _tune(assoc: Association) -> None:
    """TCP_NODELAY (pynetdicom leaves Nagle on: ~3x slower) and a bounded send queue."""
    sock = getattr(assoc.dul.socket, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    dul = assoc.dul
    send_pdu = dul.send_pdu

    def bounded_send_pdu(primitive: Any) -> None:
        while dul.to_provider_queue.qsize() >= _MAX_QUEUED_PDUS and assoc.is_established:
            time.sleep(0.0005)
        send_pdu(primitive)

    dul.send_pdu = bounded_send_pdu  # type: ignore[method-assign]


def _rejected_permanently(assoc: Association) -> bool:
    primitive = getattr(assoc.acceptor, "primitive", None)
    return getattr(primitive, "result", None) == 1


def _rejection(assoc: Association) -> str:
    primitive = getattr(assoc.acceptor, "primitive", None)
    if primitive is None:
        return "no details"
    kind = "permanent" if _rejected_permanently(assoc) else "transient"
    reason = getattr(primitive, "reason_str", "")
    return f"rejected-{kind}: {reason}".strip(": ")
