"""Named cursors of ingest (how far it has followed a feed of Orthanc's), kept in RabbitMQ.

Each cursor is a register (shared/register.py): a replicated quorum queue holding its
latest value, so that whichever ingest process is active, on whichever host, resumes
where the previous one stopped. `changes` is the /changes sequence number, with its
look-back window (services/ingest/lookback.py: seq -> fingerprint of the changes read
last) beside it; other feeds of Orthanc's add their own name to the same store.

Upgrading from a version that kept the cursor in `<state_dir>/<name>-cursor`: while the
register is still empty, that file (if present) is the starting point, once.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Protocol

from sendqueue.shared.files import write_atomic
from sendqueue.shared.register import Registers

log = logging.getLogger(__name__)


#: A look-back window: seq -> fingerprint of the change read at that seq.
Window = dict[int, str]


class CursorStore(Protocol):
    async def load(self, name: str) -> int | None: ...

    async def save(self, name: str, seq: int) -> None: ...

    async def load_window(self, name: str) -> Window | None: ...

    async def save_window(self, name: str, window: Window) -> None: ...


class Cursor:
    """One named cursor of a store: what a feed loads at start and saves as it moves."""

    def __init__(self, store: CursorStore, name: str) -> None:
        self._store = store
        self.name = name

    async def load(self) -> int | None:
        return await self._store.load(self.name)

    async def save(self, seq: int) -> None:
        await self._store.save(self.name, seq)

    async def load_window(self) -> Window | None:
        """None when there is none (a first start, or a version without the window)."""
        return await self._store.load_window(self.name)

    async def save_window(self, window: Window) -> None:
        await self._store.save_window(self.name, window)


class BrokerCursors:
    """Cursors in RabbitMQ registers named `ingest.<name>`; NotConfirmed if it is away."""

    def __init__(self, registers: Registers, legacy_dir: str | None = None) -> None:
        self._registers = registers
        self._legacy_dir = legacy_dir

    async def load(self, name: str) -> int | None:
        raw = await self._registers.read(f"ingest.{name}")
        if raw is None:
            return self._legacy(name)
        text = raw.decode("ascii", errors="replace").strip()
        if not text.isdigit():
            raise ValueError(f"corrupt cursor {name} in RabbitMQ: {text[:40]!r}")
        return int(text)

    async def save(self, name: str, seq: int) -> None:
        await self._registers.write(f"ingest.{name}", f"{seq}".encode())

    async def load_window(self, name: str) -> Window | None:
        raw = await self._registers.read(f"ingest.{name}.window")
        if raw is None:
            return None if self._legacy_dir is None else CursorFiles(self._legacy_dir).window(name)
        return _window_of(raw)

    async def save_window(self, name: str, window: Window) -> None:
        await self._registers.write(f"ingest.{name}.window", _window_bytes(window))

    def _legacy(self, name: str) -> int | None:
        if self._legacy_dir is None:
            return None
        seq = CursorFiles(self._legacy_dir).read(name)
        if seq is not None:
            log.info("cursor %s: taking over %d from the pre-upgrade state_dir file", name, seq)
        return seq


class CursorFiles:
    """Cursors in local files, `<dir>/<name>-cursor` (written atomically): what ingest kept
    before they moved to RabbitMQ; a single-process store for tests and tools."""

    def __init__(self, directory: str) -> None:
        self._dir = Path(directory)

    def path(self, name: str) -> Path:
        return self._dir / f"{name}-cursor"

    def read(self, name: str) -> int | None:
        path = self.path(name)
        try:
            text = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        if not text.isdigit():
            raise ValueError(f"corrupt cursor file {path}: {text[:40]!r}")
        return int(text)

    def write(self, name: str, seq: int) -> None:
        write_atomic(self.path(name), f"{seq}\n")

    def window(self, name: str) -> Window | None:
        try:
            return _window_of((self._dir / f"{name}-window.json").read_bytes())
        except FileNotFoundError:
            return None

    async def load_window(self, name: str) -> Window | None:
        return self.window(name)

    async def save_window(self, name: str, window: Window) -> None:
        write_atomic(self._dir / f"{name}-window.json", _window_bytes(window).decode())

    async def load(self, name: str) -> int | None:
        return self.read(name)

    async def save(self, name: str, seq: int) -> None:
        self.write(name, seq)


def _window_of(raw: bytes) -> Window | None:
    """An unreadable window counts as none (at or below the cursor counts as seen)."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    return {int(seq): str(fp) for seq, fp in doc.items() if str(seq).isdigit()}


def _window_bytes(window: Window) -> bytes:
    return json.dumps({str(k): v for k, v in sorted(window.items())}).encode()
