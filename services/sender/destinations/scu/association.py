"""One association over one blocking socket, used by one thread at a time.

Every socket operation runs under a deadline: connecting and the TLS handshake under
connect_timeout, negotiation and release under acse_timeout, each write of the data set
and the wait for a response under dimse_timeout. A deadline that passes aborts the
association (A-ABORT, then the socket is closed): a peer that stops reading or answering
costs one failed attempt, never a stuck thread. ``interrupt`` may be called from any
thread: it shuts the socket down, so whatever the owner is blocked in returns at once.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass

from sendqueue.services.sender.destinations.scu import command, pdu
from sendqueue.services.sender.destinations.scu.command import Response
from sendqueue.services.sender.destinations.scu.payload import MemoryPayload, Payload

#: Larger PDUs than this are not needed to saturate a link; a peer offering "no limit"
#: gets fragments of this size.
_MAX_FRAGMENT = 4 * 1024 * 1024
#: sendmsg takes at most IOV_MAX (1024 on Linux) buffers: two per PDU.
_IOV_BATCH = 512
#: Under TLS each write is one copy anyway: join about this much per write.
_TLS_BATCH = 64
#: A response PDU larger than this is not a response: the peer is confused.
_MAX_INCOMING = 16 * 1024 * 1024


@dataclass(frozen=True)
class Peer:
    host: str
    port: int
    called_aet: str
    calling_aet: str
    connect_timeout: float
    acse_timeout: float
    dimse_timeout: float
    tls: ssl.SSLContext | None = None
    server_name: str = ""

    def where(self) -> str:
        tls = " over TLS" if self.tls else ""
        return f"{self.called_aet}@{self.host}:{self.port}{tls}"


class ScuError(Exception):
    pass


class Unreachable(ScuError):
    """No association: connection refused or timed out, TLS failed, aborted in negotiation."""

    def __init__(self, message: str, *, tls_failed: bool = False) -> None:
        super().__init__(message)
        self.tls_failed = tls_failed


class Rejected(ScuError):
    """A-ASSOCIATE-RJ."""

    def __init__(self, rejection: pdu.Rejection) -> None:
        super().__init__(rejection.text)
        self.permanent = rejection.permanent


class Lost(ScuError):
    """The association ended during an operation (aborted, closed, or a deadline passed)."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class Association:
    def __init__(self, sock: socket.socket, peer: Peer, accepted: pdu.Accepted) -> None:
        self._sock = sock
        self._peer = peer
        self._tls = isinstance(sock, ssl.SSLSocket)
        #: (abstract syntax, transfer syntax) -> presentation context ID.
        self.contexts = accepted.contexts
        limit = accepted.max_pdu - pdu.PDATA_HEADER_SIZE + pdu.PDU_HEADER_SIZE
        if accepted.max_pdu == 0 or limit > _MAX_FRAGMENT:
            limit = _MAX_FRAGMENT
        # Fragments must be even; so the one NULL padding an odd deflated data set still fits.
        self._fragment = max(2, limit & ~1)
        self._message_id = 0
        self.established = True

    # -- opening ------------------------------------------------------------------------
    @classmethod
    def open(cls, peer: Peer, proposals: list[pdu.Proposal]) -> Association:
        sock = _connect(peer)
        try:
            sock.settimeout(peer.acse_timeout)
            sock.sendall(pdu.associate_rq(peer.calling_aet, peer.called_aet, proposals))
            kind, body = _read_pdu(sock, time.monotonic() + peer.acse_timeout)
        except (OSError, Lost) as exc:
            _close(sock, abort=True)
            raise Unreachable(f"association to {peer.where()} failed: {exc}") from None
        if kind == pdu.ASSOCIATE_AC:
            try:
                return cls(sock, peer, pdu.decode_ac(body, proposals))
            except Exception as exc:
                _close(sock, abort=True)
                raise Unreachable(f"{peer.where()} sent an invalid A-ASSOCIATE-AC: {exc}") from None
        _close(sock, abort=kind != pdu.ASSOCIATE_RJ)
        if kind == pdu.ASSOCIATE_RJ:
            raise Rejected(pdu.decode_rj(body))
        what = "aborted the association" if kind == pdu.ABORT else f"sent PDU type {kind}"
        raise Unreachable(f"{peer.where()} {what} during negotiation")

    # -- services -----------------------------------------------------------------------
    def store(self, sop_class: str, sop_instance: str, syntax: str, data: Payload) -> Response:
        """C-STORE; raises Lost (the association is then closed) when it is interrupted."""
        context = self.contexts[(sop_class, syntax)]
        message_id = self._next_id()
        request = command.c_store_rq(message_id, sop_class, sop_instance)
        return self._exchange(context, message_id, request, data)

    def echo(self) -> Response:
        context = self.contexts[(command.VERIFICATION, _IMPLICIT)]
        message_id = self._next_id()
        return self._exchange(context, message_id, command.c_echo_rq(message_id), None)

    def _next_id(self) -> int:
        self._message_id = self._message_id % 0xFFFF + 1
        return self._message_id

    def _exchange(
        self, context: int, message_id: int, request: bytes, data: Payload | None
    ) -> Response:
        try:
            self._sock.settimeout(self._peer.dimse_timeout)
            self._send(context, pdu.COMMAND, MemoryPayload(request))
            if data is not None:
                self._send(context, 0, data)
            return self._response(message_id, time.monotonic() + self._peer.dimse_timeout)
        except Lost:
            self.abort()
            raise
        except TimeoutError:
            self.abort()
            raise Lost(
                f"no progress within dimse_timeout ({self._peer.dimse_timeout:g}s)",
                timed_out=True,
            ) from None
        except OSError as exc:
            self.abort()
            raise Lost(f"the connection failed: {exc!r}") from None

    def _send(self, context: int, flags: int, data: Payload) -> None:
        """The payload as P-DATA-TF PDUs of one PDV each, the last one flagged so."""
        fragment, left = self._fragment, data.length
        if left == 0:
            self._write([pdu.pdata_header(context, flags | pdu.LAST, 0)])
            return
        parts: list[bytes | memoryview] = []
        for block in data.blocks(fragment):
            for at in range(0, len(block), fragment):
                piece = block[at : at + fragment]
                left -= len(piece)
                control = flags | (pdu.LAST if left == 0 else 0)
                parts += (pdu.pdata_header(context, control, len(piece)), piece)
            self._write(parts)
            parts.clear()

    def _write(self, parts: Sequence[bytes | memoryview]) -> None:
        if self._tls:  # SSLSocket has no sendmsg
            for start in range(0, len(parts), _TLS_BATCH):
                self._sock.sendall(b"".join(parts[start : start + _TLS_BATCH]))
            return
        for start in range(0, len(parts), _IOV_BATCH):
            batch = list(parts[start : start + _IOV_BATCH])
            left = sum(len(part) for part in batch)
            while left:
                sent = self._sock.sendmsg(batch)
                left -= sent
                if left:
                    batch = _advance(batch, sent)

    def _response(self, message_id: int, deadline: float) -> Response:
        """Read PDUs until the response to message_id (a data set after it is skipped)."""
        fragments: list[bytes] = []
        response: Response | None = None
        while True:
            kind, body = _read_pdu(self._sock, deadline)
            if kind == pdu.ABORT:
                self._closed()
                raise Lost("the peer aborted the association")
            if kind == pdu.RELEASE_RQ:
                with contextlib.suppress(OSError):
                    self._sock.sendall(pdu.RELEASE_RP_PDU)
                self._closed()
                raise Lost("the peer released the association instead of answering")
            if kind != pdu.P_DATA_TF:
                raise Lost(f"unexpected PDU type {kind} instead of a response")
            for _, control, piece in pdu.iter_pdvs(body):
                if response is None and control & pdu.COMMAND:
                    fragments.append(bytes(piece))
                    if control & pdu.LAST:
                        response = self._decoded(b"".join(fragments), message_id)
                        if not response.has_data_set:
                            return response
                elif response is not None and control == pdu.LAST:
                    return response

    @staticmethod
    def _decoded(command_set: bytes, message_id: int) -> Response:
        try:
            response = command.decode_response(command_set)
        except ValueError as exc:
            raise Lost(f"undecodable response: {exc}") from None
        if response.responding_to != message_id:
            raise Lost(f"a response to message {response.responding_to}, expected {message_id}")
        return response

    # -- ending -------------------------------------------------------------------------
    def release(self, wait: float | None = None) -> None:
        """A-RELEASE; an abort if the peer does not confirm within `wait` (acse_timeout)."""
        if not self.established:
            return
        wait = self._peer.acse_timeout if wait is None else wait
        deadline = time.monotonic() + wait
        try:
            self._sock.settimeout(wait)
            self._sock.sendall(pdu.RELEASE_RQ_PDU)
            while True:
                kind, _ = _read_pdu(self._sock, deadline)
                if kind in (pdu.RELEASE_RP, pdu.ABORT):
                    break
                if kind == pdu.RELEASE_RQ:  # release collision (PS3.8 7.2.2.2)
                    self._sock.sendall(pdu.RELEASE_RP_PDU)
                    break
        except (OSError, Lost):
            self.abort()
            return
        self._closed()

    def abort(self) -> None:
        if self.established:
            self.established = False
            _close(self._sock, abort=True)

    def interrupt(self) -> None:
        """From another thread: make the owner's blocked socket call fail now."""
        with contextlib.suppress(OSError):
            # socket.socket's own shutdown, also under TLS: no TLS close_notify from here.
            socket.socket.shutdown(self._sock, socket.SHUT_RDWR)

    def _closed(self) -> None:
        self.established = False
        _close(self._sock, abort=False)


_IMPLICIT = "1.2.840.10008.1.2"


def _connect(peer: Peer) -> socket.socket:
    try:
        raw = socket.create_connection((peer.host, peer.port), timeout=peer.connect_timeout)
    except OSError as exc:
        raise Unreachable(f"cannot connect to {peer.where()}: {exc}") from None
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if peer.tls is None:
        return raw
    try:
        return peer.tls.wrap_socket(raw, server_hostname=peer.server_name or peer.host)
    except ssl.SSLError as exc:
        raw.close()
        detail = getattr(exc, "verify_message", None) or exc.reason or str(exc)
        raise Unreachable(f"TLS handshake failed: {detail}", tls_failed=True) from None
    except OSError as exc:
        raw.close()
        raise Unreachable(f"TLS handshake with {peer.where()} failed: {exc}") from None


def _read_pdu(sock: socket.socket, deadline: float) -> tuple[int, bytes]:
    kind, length = pdu.parse_pdu_header(_read_exact(sock, pdu.PDU_HEADER_SIZE, deadline))
    if length > _MAX_INCOMING:
        raise Lost(f"incoming PDU of {length} bytes")
    return kind, _read_exact(sock, length, deadline)


def _read_exact(sock: socket.socket, size: int, deadline: float) -> bytes:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        read = sock.recv_into(view[got:])
        if not read:
            raise Lost("the peer closed the connection")
        got += read
    return bytes(buffer)


def _advance(parts: list[bytes | memoryview], sent: int) -> list[bytes | memoryview]:
    """What is left of parts after the first `sent` bytes went out."""
    for index, part in enumerate(parts):
        if sent < len(part):
            return [memoryview(part)[sent:], *parts[index + 1 :]]
        sent -= len(part)
    return []


def _close(sock: socket.socket, *, abort: bool) -> None:
    if abort:
        with contextlib.suppress(OSError, ValueError):
            sock.settimeout(0.5)  # best effort: the peer may not read at all
            sock.send(pdu.ABORT_PDU)
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    sock.close()
