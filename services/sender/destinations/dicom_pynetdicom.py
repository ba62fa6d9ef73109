"""data_path = "pynetdicom": C-STORE with pynetdicom's own association and threads.

Kept for peers or setups the fast path (scu/) does not cover. Each worker thread owns one
association and reuses it across many instances (re-associating after an abort, an idle
period, or when an instance needs a presentation context the current association lacks).
Files are sent in chunks straight from the spool file.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pynetdicom import AE, _config
from pynetdicom.association import Association

from sendqueue.services.sender.destinations.contexts import (
    VERIFICATION,
    Context,
    KnownContexts,
    proposals,
    refused_error,
)
from sendqueue.services.sender.destinations.dimse_status import raise_for_status
from sendqueue.services.sender.destinations.instance import (
    InstanceMeta,
    pad_deflated_data_set,
    read_meta,
)
from sendqueue.services.sender.destinations.tls import handshake_error
from sendqueue.shared.config import DicomDestinationConfig
from sendqueue.shared.errors import (
    AssociationRejected,
    DestinationUnavailable,
    PermanentError,
    TransientError,
)

log = logging.getLogger(__name__)

# Send the dataset from the file in PDU-sized chunks instead of loading it whole.
_config.STORE_SEND_CHUNKED_DATASET = True

#: P-DATA PDUs allowed to wait in pynetdicom's send queue: without a bound it queues a
#: whole file in memory when the peer reads slower than we read the disk.
_MAX_QUEUED_PDUS = 8
#: A failure this soon on a reused association is probably an idle close by the peer.
_STALE_FAILURE_SECONDS = 2.0


@dataclass
class _Link:
    """The association one worker thread owns."""

    assoc: Association | None = None
    accepted: set[Context] = field(default_factory=set)
    refused: set[Context] = field(default_factory=set)
    last_used: float = 0.0


class PynetdicomPath:
    """data_path = "pynetdicom": one pynetdicom association per worker thread."""

    def __init__(
        self, config: DicomDestinationConfig, tls: ssl.SSLContext | None, known: KnownContexts
    ) -> None:
        self.config = config
        self.name = config.name
        self._tls = tls
        self._known = known
        self._local = threading.local()
        self._lock = threading.Lock()
        self._links: list[_Link] = []

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
        link.assoc = self._associate(self._known.remember(wanted))
        accepted = link.assoc.accepted_contexts
        link.accepted = {(str(c.abstract_syntax), str(c.transfer_syntax[0])) for c in accepted}
        link.refused = set()
        link.last_used = time.monotonic()
        if wanted not in link.accepted:
            link.refused.add(wanted)
            raise self._refused_error(link, meta)
        return False

    def _refused_error(self, link: _Link, meta: InstanceMeta) -> PermanentError:
        return refused_error(self.name, link.accepted, meta)

    def _associate(self, contexts: list[Context]) -> Association:
        ae = self._new_ae()
        for sop_class, syntaxes in proposals(contexts):
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

    def release_idle(self) -> None:
        """Nothing to do: pynetdicom's network_timeout ends an association idle too long."""

    def close_all(self) -> None:
        with self._lock:
            links = list(self._links)
        for link in links:
            self._drop(link)


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
