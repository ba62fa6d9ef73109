"""DICOM destinations for tests.

ScriptedSCP is a pynetdicom Storage SCP in this process whose answers are scripted per
instance (fail the first N tries, fail some UIDs, refuse associations for a while, go down
and come back on the same port). StorescpProcess is DCMTK's storescp as a subprocess: a real,
fast, C++ receiver like many PACS.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.support.ports import free_port, wait_port

StatusFor = Callable[[str, int], int]
"""(SOPInstanceUID, nth receive of that UID starting at 1) -> C-STORE status."""

UNCOMPRESSED: list[str] = [
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
]
COMPRESSED: list[str] = [
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]
DEFAULT_TRANSFER_SYNTAXES = UNCOMPRESSED + COMPRESSED


def always(status: int) -> StatusFor:
    """Answer every C-STORE with status."""
    return lambda _uid, _nth: status


def fail_first(n: int, status: int = 0xA700) -> StatusFor:
    """The first n receives of each instance get status, later ones succeed."""
    return lambda _uid, nth: status if nth <= n else 0x0000


def fail_for(uids: Iterable[str], status: int = 0xA700) -> StatusFor:
    """These instances always get status; all others succeed."""
    failing = frozenset(uids)
    return lambda uid, _nth: status if uid in failing else 0x0000


def is_success(status: int) -> bool:
    """Success or warning (0xB000, 0xB006, 0xB007...): the instance was stored."""
    return status == 0x0000 or (status & 0xF000) == 0xB000


class _ScriptableAE(AE):
    """An AE that can reject associations for a while.

    pynetdicom rejects (rejected-transient, local-limit-exceeded) when its active acceptor
    associations outnumber maximum_associations, and reads the property for every request:
    answering 0 while refusing turns every request into that rejection.
    """

    refuse_until = 0.0

    @property
    def maximum_associations(self) -> int:
        if time.monotonic() < self.refuse_until:
            return 0
        return self._maximum_associations

    @maximum_associations.setter
    def maximum_associations(self, value: int) -> None:
        self._maximum_associations = max(1, int(value))


class ScriptedSCP:
    """Storage + Verification SCP on 127.0.0.1 with scripted answers; see module docstring."""

    def __init__(
        self,
        aet: str = "SCRIPTEDSCP",
        *,
        status_for: StatusFor | None = None,
        transfer_syntaxes: list[str] | None = None,
        write_dir: str | Path | None = None,
        max_pdu: int = 16382,
        max_associations: int = 32,
        store_delay: float = 0.0,
        port: int | None = None,
        require_called_aet: bool = False,
    ) -> None:
        self.aet = aet
        self.port = port or free_port()
        self.status_for: StatusFor = status_for or always(0x0000)
        self.write_dir = Path(write_dir) if write_dir else None
        self.store_delay = store_delay  # seconds before answering: a slow PACS
        self.counts: Counter[str] = Counter()
        self.received: list[tuple[str, int]] = []  # (uid, status) in arrival order
        self.stored: set[str] = set()
        #: The transfer syntax each instance last arrived in.
        self.syntax_of: dict[str, str] = {}
        self.associations = 0
        #: AE titles the stores came from.
        self.calling_aets: set[str] = set()
        self.rejections = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._ae = self._make_ae(
            transfer_syntaxes or DEFAULT_TRANSFER_SYNTAXES, max_pdu, max_associations
        )
        # Another called AE title is then rejected-permanent ("called AE title not recognised").
        self._ae.require_called_aet = require_called_aet
        self._running = False

    def _make_ae(self, syntaxes: list[str], max_pdu: int, max_assocs: int) -> _ScriptableAE:
        ae = _ScriptableAE(ae_title=self.aet)
        for context in AllStoragePresentationContexts:
            assert context.abstract_syntax is not None
            ae.add_supported_context(context.abstract_syntax, syntaxes)
        ae.add_supported_context(Verification, UNCOMPRESSED)
        ae.maximum_pdu_size = max_pdu
        ae.maximum_associations = max_assocs
        return ae

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> ScriptedSCP:
        """Listen (again) on the same port."""
        if self._running:
            return self
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, lambda _event: 0x0000),
            (evt.EVT_CONN_OPEN, _set_nodelay),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        self._ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)
        self._running = True
        return self

    def stop(self) -> None:
        """Abort open associations and close the listening socket: connection refused."""
        if self._running:
            self._ae.shutdown()
            self._running = False

    def __enter__(self) -> ScriptedSCP:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def refuse_associations(self, seconds: float) -> None:
        """Reject association requests (rejected-transient) for the next seconds."""
        self._ae.refuse_until = time.monotonic() + seconds

    # -- handlers (run on pynetdicom's association threads) --------------------------------

    def _on_store(self, event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        with self._lock:
            self.calling_aets.add(str(event.assoc.requestor.ae_title).strip())
            self.counts[uid] += 1
            nth = self.counts[uid]
            self.syntax_of[uid] = str(event.context.transfer_syntax)
        if self.store_delay:
            time.sleep(self.store_delay)
        status = self.status_for(uid, nth)
        if is_success(status) and self.write_dir is not None:
            self.write_dir.mkdir(parents=True, exist_ok=True)
            (self.write_dir / f"{uid}.dcm").write_bytes(event.encoded_dataset())
        with self._changed:
            self.received.append((uid, status))
            if is_success(status):
                self.stored.add(uid)
            self._changed.notify_all()
        return status

    def _on_accepted(self, _event: Any) -> None:
        with self._lock:
            self.associations += 1

    def _on_rejected(self, _event: Any) -> None:
        with self._lock:
            self.rejections += 1

    # -- queries ------------------------------------------------------------------------

    def receive_count(self, uid: str) -> int:
        with self._lock:
            return self.counts[uid]

    def stored_uids(self) -> set[str]:
        with self._lock:
            return set(self.stored)

    def wait_for(self, n_unique: int, timeout: float = 30.0) -> set[str]:
        """Wait until n_unique distinct instances were stored successfully; returns them."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.stored) < n_unique:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"{self.aet}: {len(self.stored)} instances stored, wanted {n_unique}"
                        f" ({sum(self.counts.values())} C-STOREs received)"
                    )
                self._changed.wait(left)
            return set(self.stored)


def _set_nodelay(event: Any) -> None:
    # pynetdicom leaves Nagle on: a peer reusing the association would wait ~40 ms per
    # C-STORE for our delayed ACK, making the test peer the bottleneck.
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class StorescpProcess:
    """DCMTK storescp on a free port, writing what it receives into output_dir."""

    def __init__(
        self,
        aet: str = "STORESCP",
        *,
        port: int | None = None,
        output_dir: str | Path | None = None,
        max_pdu: int | None = None,
        fork: bool = True,
        extra_args: Iterable[str] = (),
        start_timeout: float = 10.0,
    ) -> None:
        self.aet = aet
        self.port = port or free_port()
        self._own_dir = output_dir is None
        self.output_dir = Path(output_dir or tempfile.mkdtemp(prefix="sq-storescp-"))
        self.log_path = self.output_dir.with_name(self.output_dir.name + ".log")
        self.max_pdu = max_pdu
        self.fork = fork
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def command(self) -> list[str]:
        # +xa: accept every transfer syntax storescp knows; -dhl: no reverse DNS lookups.
        cmd = ["storescp", "-aet", self.aet, "-od", str(self.output_dir), "+xa", "-dhl"]
        if self.fork:
            # One child per association; else a second concurrent association waits in the
            # listen backlog until the sender's ACSE timeout.
            cmd.append("--fork")
        if self.max_pdu:
            cmd += ["-pdu", str(self.max_pdu)]
        return [*cmd, *self.extra_args, str(self.port)]

    def start(self) -> StorescpProcess:
        if self._proc is not None:
            raise RuntimeError("storescp already running")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, TCP_NODELAY="1")  # see orthanc.py: DCMTK and Nagle
        with open(self.log_path, "ab") as log:
            # Own session: stop() signals the process group, the --fork children included.
            self._proc = subprocess.Popen(
                self.command(),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        assert self._proc is not None
        while self._proc.poll() is None:
            try:
                wait_port(self.port, timeout=0.2)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
        raise RuntimeError(f"storescp exited ({self._proc.returncode}); see {self.log_path}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop by PID (its process group): SIGTERM, then SIGKILL after timeout seconds."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
        # A --fork child busy with an association may outlive the parent's SIGTERM.
        _signal_group(proc.pid, signal.SIGKILL)

    def close(self) -> None:
        """Stop, then remove the output dir if this object created it, and the log."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.output_dir, ignore_errors=True)
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> StorescpProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def received_sop_uids(self) -> set[str]:
        """SOPInstanceUIDs of the files written so far, from storescp's file names.

        storescp names files '<modality prefix>.<SOPInstanceUID>' (e.g. 'CT.1.2.3'); a file
        may still be being written when it is listed.
        """
        return {_uid_from_name(p.name) for p in self.output_dir.iterdir() if p.is_file()}

    def wait_for(self, n_unique: int, timeout: float = 30.0) -> set[str]:
        deadline = time.monotonic() + timeout
        while len(uids := self.received_sop_uids()) < n_unique:
            if time.monotonic() > deadline:
                raise TimeoutError(f"storescp received {len(uids)} instances, wanted {n_unique}")
            time.sleep(0.1)
        return uids


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _uid_from_name(name: str) -> str:
    prefix, _, rest = name.partition(".")
    return rest if rest and not prefix.isdigit() else name
