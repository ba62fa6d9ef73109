"""The /changes cursor and the look-back window, persisted atomically (write, fsync, rename)."""

from __future__ import annotations

import json
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


class WindowFile:
    """What the changes of the look-back window were (seq -> fingerprint), next to the cursor."""

    def __init__(self, state_dir: str, name: str = "changes-window.json") -> None:
        self.path = Path(state_dir) / name

    def load(self) -> dict[int, str] | None:
        """None when there is none (a first start, or a version without the window)."""
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError:
            return None  # unreadable: as if absent (at or below the cursor counts as seen)
        if not isinstance(doc, dict):
            return None
        return {int(seq): str(fp) for seq, fp in doc.items() if str(seq).isdigit()}

    def save(self, window: dict[int, str]) -> None:
        write_atomic(self.path, json.dumps({str(k): v for k, v in sorted(window.items())}))
