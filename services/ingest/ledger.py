"""What ingest already queued for each destination, so that a series or study that grows
is not queued whole again: only its new or changed instances are.

An entry is (destination, SOP Instance UID) -> the content identity of the Orthanc
instance queued (its file's MD5, or the attachment's UUID when Orthanc keeps no MD5): an
instance stored again with other content (Orthanc's `OverwriteInstances`) is queued again.

Ingest alone decides what is queued, so the ledger lives with it (SQLite in its
state_dir, next to the cursor), and the senders share nothing for it: any number of
sender processes work. An entry is written once the broker confirmed the job and before
the cursor moves past its change, so a crash in between re-reads the page and finds the
entry: nothing is queued twice because of it, and nothing is skipped that was not
queued. It is bounded: entries older than `ledger_max_age` go, and beyond
`ledger_max_entries` the oldest go first (a study that grows after that is sent whole
again: duplicates, never loss).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

from sendqueue.shared.resolver import Resolver
from sendqueue.shared.schemas import SendJob
from sendqueue.shared.sqlite_file import open_db

SkipHook = Callable[[SendJob], None]

#: Rows written between two prunes.
_PRUNE_EVERY = 1000


class QueuedLedger:
    def __init__(
        self,
        path: Path,
        *,
        max_age: float,
        max_entries: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # The cursor is fsynced after the entries: they must be on disk before it.
        self._db = open_db(
            path,
            synchronous="FULL",
            schema=(
                "CREATE TABLE IF NOT EXISTS queued (destination TEXT, sop TEXT, content TEXT,"
                " queued_at REAL, PRIMARY KEY (destination, sop))",
                "CREATE INDEX IF NOT EXISTS by_age ON queued (queued_at)",
            ),
        )
        self._max_age = max_age
        self._max_entries = max_entries
        self._clock = clock
        self._since_prune = 0
        self.prune()

    def close(self) -> None:
        self._db.close()

    def already_queued(self, destination: str, sop: str, content: str) -> bool:
        row = self._db.execute(
            "SELECT content, queued_at FROM queued WHERE destination = ? AND sop = ?",
            (destination, sop),
        ).fetchone()
        if row is None or row[1] < self._clock() - self._max_age:
            return False
        return bool(row[0] == content)

    def record(self, entries: Iterable[tuple[str, str, str]]) -> None:
        """(destination, sop, content) of jobs the broker confirmed, in one transaction."""
        now = self._clock()
        rows = [(d, sop, content, now) for d, sop, content in entries]
        if not rows:
            return
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO queued VALUES (?, ?, ?, ?)", rows)
        self._since_prune += len(rows)
        if self._since_prune >= _PRUNE_EVERY:
            self.prune()

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM queued").fetchone()[0])

    def prune(self) -> None:
        self._since_prune = 0
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "DELETE FROM queued WHERE queued_at < ?", (self._clock() - self._max_age,)
            )
            extra = self.count() - self._max_entries
            if extra > 0:
                self._db.execute(
                    "DELETE FROM queued WHERE rowid IN"
                    " (SELECT rowid FROM queued ORDER BY queued_at LIMIT ?)",
                    (extra,),
                )


class Resends:
    """Keeps jobs of instances already queued for their destination out of a page, and
    records a page's jobs once the broker confirmed them."""

    def __init__(self, ledger: QueuedLedger, resolver: Resolver, on_skip: SkipHook) -> None:
        self._ledger = ledger
        self._resolver = resolver
        self._on_skip = on_skip
        #: job id -> (destination, sop, content) for the jobs of the page being read.
        self._pending: dict[str, tuple[str, str, str]] = {}

    def begin_page(self) -> None:
        """A page is read (again, after a failed round): nothing of an earlier one holds."""
        self._pending.clear()

    async def new_only(self, jobs: list[SendJob]) -> list[SendJob]:
        contents: dict[str, str | None] = {}
        seen = set(self._pending.values())
        kept = []
        for job in jobs:
            if job.orthanc_id not in contents:
                contents[job.orthanc_id] = await self._resolver.content_identity(job.orthanc_id)
            content = contents[job.orthanc_id]
            if content is None:
                continue  # deleted from Orthanc meanwhile: nothing left to send
            entry = (job.destination, job.sop_instance_uid or job.orthanc_id, content)
            if entry in seen or self._ledger.already_queued(*entry):
                self._on_skip(job)
                continue
            seen.add(entry)
            self._pending[job.id] = entry
            kept.append(job)
        return kept

    def confirmed(self, jobs: Iterable[SendJob]) -> None:
        self._ledger.record(self._pending[job.id] for job in jobs if job.id in self._pending)
        self._pending.clear()
