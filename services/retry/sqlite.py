"""How the retry service opens its SQLite files (parked index, audit log, delay ledger)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def open_db(path: Path, *, synchronous: str = "FULL") -> sqlite3.Connection:
    """Autocommit, WAL; `synchronous="NORMAL"` for data that can be rebuilt or is advisory.

    check_same_thread is off because bulk passes run queries from worker threads; callers
    never use one connection from two threads at once.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    return db
