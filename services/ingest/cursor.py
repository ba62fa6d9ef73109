"""The /changes cursor, persisted atomically (write, fsync, rename)."""

from __future__ import annotations

from pathlib import Path

from sendqueue.shared.files import write_atomic


class CursorFile:
    def __init__(self, state_dir: str, name: str = "changes-cursor") -> None:
        self.path = Path(state_dir) / name

    def load(self) -> int | None:
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        if not text.isdigit():
            raise ValueError(f"corrupt cursor file {self.path}: {text[:40]!r}")
        return int(text)

    def save(self, seq: int) -> None:
        write_atomic(self.path, f"{seq}\n")
