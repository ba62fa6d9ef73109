"""The parked-items index: SQLite beside the parking queue, for fast listing and filters.

The parking queue is the truth (the management UI can purge or move its messages); this
index mirrors it and is rebuilt from the queue whenever the two disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

from sendqueue.shared.sqlite_file import open_db


class ParkedItem(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    destination: str
    orthanc_id: str = ""
    sop_instance_uid: str = ""
    series_instance_uid: str = ""
    study_instance_uid: str = ""
    patient_id: str = ""
    patient_name: str = ""
    modality: str = ""
    attempts: int = 0
    first_failed_at: float | None = None
    last_failed_at: float | None = None
    parked_at: float = 0.0
    reason: str = ""
    reason_class: str = ""
    #: "changes", "api" or "orthanc-job" (see SendJob.source).
    source: str = ""
    #: The failed Orthanc store job it comes from: ID, error, when, how many instances.
    orthanc_job: str = ""
    orthanc_job_error: str = ""
    orthanc_job_failed_at: float | None = None
    orthanc_job_instances: int = 0


_COLUMNS = list(ParkedItem.__struct_fields__)


def _sql_literal(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


@dataclass(frozen=True)
class Filters:
    """Selection of parked items; every given field must match."""

    destination: str | None = None
    reason_class: str | None = None
    study: str | None = None
    orthanc_job: str | None = None
    patient: str | None = None
    since: float | None = None
    until: float | None = None

    def matches(self, item: ParkedItem) -> bool:
        return (
            (self.destination is None or item.destination == self.destination)
            and (self.reason_class is None or item.reason_class == self.reason_class)
            and (self.study is None or item.study_instance_uid == self.study)
            and (self.orthanc_job is None or item.orthanc_job == self.orthanc_job)
            and (self.patient is None or item.patient_id == self.patient)
            and (self.since is None or item.parked_at >= self.since)
            and (self.until is None or item.parked_at < self.until)
        )

    def where(self) -> tuple[str, list[object]]:
        clauses: list[str] = []
        values: list[object] = []
        for column, value in (
            ("destination", self.destination),
            ("reason_class", self.reason_class),
            ("study_instance_uid", self.study),
            ("orthanc_job", self.orthanc_job),
            ("patient_id", self.patient),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                values.append(value)
        if self.since is not None:
            clauses.append("parked_at >= ?")
            values.append(self.since)
        if self.until is not None:
            clauses.append("parked_at < ?")
            values.append(self.until)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", values


class ParkedIndex:
    def __init__(self, path: Path) -> None:
        self._db = open_db(path, synchronous="NORMAL")
        columns = ", ".join(f"{c} TEXT PRIMARY KEY" if c == "id" else c for c in _COLUMNS)
        # pass_seq: the last pass over the queue that saw the item (stale rows are the
        # ones a complete pass did not see).
        self._db.execute(
            f"CREATE TABLE IF NOT EXISTS parked ({columns}, pass_seq INTEGER NOT NULL DEFAULT 0)"
        )
        self._add_new_columns()
        for column in ("destination", "reason_class", "study_instance_uid", "patient_id"):
            self._db.execute(f"CREATE INDEX IF NOT EXISTS by_{column} ON parked ({column})")
        self._db.execute("CREATE INDEX IF NOT EXISTS by_time ON parked (parked_at, id)")
        # Items whose requeued copy the broker confirmed, kept until a complete pass.
        self._db.execute("CREATE TABLE IF NOT EXISTS requeued (id TEXT PRIMARY KEY)")

    def _add_new_columns(self) -> None:
        """An index made by an older version lacks the newer fields: add them (empty)."""
        have = {row[1] for row in self._db.execute("PRAGMA table_info(parked)")}
        defaults = ParkedItem(id="", destination="")
        for column in _COLUMNS:
            if column not in have:
                default = getattr(defaults, column)
                self._db.execute(
                    f"ALTER TABLE parked ADD COLUMN {column} DEFAULT {_sql_literal(default)}"
                )

    def close(self) -> None:
        self._db.close()

    def add(self, items: Iterable[ParkedItem], pass_seq: int = 0) -> None:
        marks = ", ".join("?" for _ in _COLUMNS)
        rows = [(*(getattr(i, c) for c in _COLUMNS), pass_seq) for i in items]
        with self._db:
            self._db.executemany(
                f"INSERT OR REPLACE INTO parked ({', '.join(_COLUMNS)}, pass_seq)"
                f" VALUES ({marks}, ?)",
                rows,
            )

    def journal_requeued(self, ids: Sequence[str]) -> None:
        if ids:
            with self._db:
                self._db.executemany(
                    "INSERT OR IGNORE INTO requeued VALUES (?)", [(i,) for i in ids]
                )

    def requeued_before(self, ids: Sequence[str]) -> set[str]:
        return self._select_ids("requeued", ids)

    def seen_in_pass(self, ids: Sequence[str], pass_seq: int) -> set[str]:
        """Of these ids, the ones this pass has handled already (duplicates to drop)."""
        if not pass_seq:
            return set()
        return self._select_ids("parked", ids, f"pass_seq = {int(pass_seq)} AND ")

    def has_requeued(self) -> bool:
        return self._db.execute("SELECT 1 FROM requeued LIMIT 1").fetchone() is not None

    def clear_requeued(self) -> None:
        with self._db:
            self._db.execute("DELETE FROM requeued")

    def next_pass(self) -> int:
        return int(
            self._db.execute("SELECT COALESCE(MAX(pass_seq), 0) + 1 FROM parked").fetchone()[0]
        )

    def finish_pass(self, pass_seq: int) -> None:
        """A complete pass saw every parked message: forget rows it did not see."""
        with self._db:
            self._db.execute("DELETE FROM parked WHERE pass_seq != ?", (pass_seq,))

    def remove(self, ids: Iterable[str]) -> None:
        with self._db:
            self._db.executemany("DELETE FROM parked WHERE id = ?", [(i,) for i in ids])

    def count(self, filters: Filters | None = None) -> int:
        where, values = (filters or Filters()).where()
        return int(self._db.execute(f"SELECT COUNT(*) FROM parked{where}", values).fetchone()[0])

    def page(
        self, filters: Filters, limit: int, after: tuple[float, str] | None = None
    ) -> list[ParkedItem]:
        """Oldest first; `after` is the (parked_at, id) of the previous page's last item."""
        where, values = filters.where()
        if after is not None:
            where += (" AND " if where else " WHERE ") + "(parked_at, id) > (?, ?)"
            values = [*values, *after]
        rows = self._db.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM parked{where} ORDER BY parked_at, id LIMIT ?",
            [*values, limit],
        ).fetchall()
        return [ParkedItem(**dict(zip(_COLUMNS, row, strict=True))) for row in rows]

    def known(self, ids: Sequence[str]) -> set[str]:
        return self._select_ids("parked", ids)

    def _select_ids(self, table: str, ids: Sequence[str], where: str = "") -> set[str]:
        found: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = list(ids[start : start + 500])
            marks = ", ".join("?" for _ in chunk)
            query = f"SELECT id FROM {table} WHERE {where}id IN ({marks})"
            found.update(row[0] for row in self._db.execute(query, chunk))
        return found

    def counts_by_destination(self) -> dict[str, int]:
        query = "SELECT destination, COUNT(*) FROM parked GROUP BY destination"
        return {row[0]: int(row[1]) for row in self._db.execute(query)}

    def destinations(self) -> set[str]:
        return {row[0] for row in self._db.execute("SELECT DISTINCT destination FROM parked")}
