"""The /changes cursor, persisted atomically (write, fsync, rename)."""

from __future__ import annotations

import os
from pathlib import Path


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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="ascii") as out:
            out.write(f"{seq}\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
