"""How the services open their SQLite files (ingest's queued ledger; retry's parked index,
audit log, delay ledger, cleanup list).

Two processes may open one file at the same moment: the ingest processes of one host share
their state_dir (one active, the others waiting). SQLite answers "database is locked" at
once, without waiting out the busy timeout, to a connection that asks for WAL or creates
the schema while the other one does the same (it cannot wait there without risking a
deadlock): those statements are tried again for a while before the error is let through.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

#: Seconds a statement waits for another process's write lock (SQLite's busy timeout).
BUSY_TIMEOUT = 30.0
#: Seconds the setup statements are tried again when SQLite refuses them at once.
_SETUP_WITHIN, _SETUP_PAUSE = 30.0, 0.05


def open_db(
    path: Path, *, synchronous: str = "FULL", schema: Iterable[str] = ()
) -> sqlite3.Connection:
    """Autocommit, WAL, then the `schema` statements (CREATE ... IF NOT EXISTS);
    `synchronous="NORMAL"` for data that can be rebuilt or is advisory.

    check_same_thread is off because bulk passes run queries from worker threads; callers
    never use one connection from two threads at once.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT)
    try:
        for statement in ("PRAGMA journal_mode=WAL", f"PRAGMA synchronous={synchronous}", *schema):
            _execute_while_locked(db, statement)
    except BaseException:
        db.close()
        raise
    return db


def _execute_while_locked(db: sqlite3.Connection, statement: str) -> None:
    deadline = time.monotonic() + _SETUP_WITHIN
    while True:
        try:
            db.execute(statement)
            return
        except sqlite3.OperationalError as exc:
            if not _locked(exc) or time.monotonic() > deadline:
                raise
            time.sleep(_SETUP_PAUSE)


def _locked(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)
