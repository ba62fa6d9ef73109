"""Two processes opening one new SQLite file at the same moment both get it."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from sendqueue.shared.sqlite_file import open_db

pytestmark = pytest.mark.timeout(120)

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS queued (destination TEXT, sop TEXT,"
    " PRIMARY KEY (destination, sop))",
    "CREATE INDEX IF NOT EXISTS by_sop ON queued (sop)",
)


def _open_after(start: multiprocessing.synchronize.Barrier, path: str) -> None:
    start.wait()
    db = open_db(Path(path), schema=SCHEMA)
    db.execute("INSERT OR REPLACE INTO queued VALUES ('pacs', ?)", (path,))
    db.close()


def test_two_processes_opening_a_new_file_at_once_both_succeed(tmp_path: Path) -> None:
    # Given two processes starting together on each of many new files (an ingest and its
    # standby on one host, sharing state_dir): SQLite refuses one of them at once ("database
    # is locked") about a third of the time without the retry
    context = multiprocessing.get_context("spawn")
    for attempt in range(20):
        path = str(tmp_path / f"ledger-{attempt}.sqlite3")
        start = context.Barrier(2)
        workers = [context.Process(target=_open_after, args=(start, path)) for _ in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
        # Then both opened it, made the schema and wrote
        assert [worker.exitcode for worker in workers] == [0, 0], f"attempt {attempt}"
        db = open_db(Path(path), schema=SCHEMA)
        assert db.execute("SELECT count(*) FROM queued").fetchone() == (1,)
        db.close()


def test_a_file_that_is_not_sqlite_is_refused_with_sqlites_error(tmp_path: Path) -> None:
    path = tmp_path / "queued.sqlite3"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(Exception, match="not a database"):
        open_db(path, schema=SCHEMA)
