"""The Orthanc job IDs ingest has dealt with, kept across restarts.

Orthanc's job IDs are random UUIDs with no order, so the "cursor" of the jobs watch is a
set: the finished store jobs already captured or judged not to need capturing. It is
saved (write, fsync, rename: shared/files.py) only after the broker confirmed the jobs of
every ID in it, so a crash captures a job twice at worst, never zero times.

Everything that stores this set is in this one class, so that it can live somewhere else
(the broker, for ingest take-overs) without the watcher changing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

from sendqueue.shared.files import write_atomic

#: An ID Orthanc no longer lists is kept this long (Orthanc reloads its saved jobs after
#: a restart, with the same IDs) and then forgotten, so the file stays small.
_KEEP_GONE = 7 * 86400.0
_MAX_IDS = 100_000


class HandledJobs:
    def __init__(self, state_dir: str, name: str = "orthanc-jobs-handled.json") -> None:
        self.path = Path(state_dir) / name
        #: job ID -> when it was last listed by Orthanc (epoch seconds).
        self._ids: dict[str, float] = {}
        #: Jobs ingest cancelled in Orthanc to send them itself (services/ingest/take_over.py):
        #: cancelled, but to be captured, even after a crash between cancel and capture.
        self._taken: dict[str, float] = {}
        self._dirty = False

    def load(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        try:
            data = json.loads(text)
            self._ids = {str(k): float(v) for k, v in data["handled"].items()}
            self._taken = {str(k): float(v) for k, v in data.get("taken_over", {}).items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ValueError(f"corrupt state file {self.path}: {text[:60]!r}") from None

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> frozenset[str]:
        return frozenset(self._ids)

    def taken_over(self) -> frozenset[str]:
        return frozenset(self._taken)

    def take_over(self, job_id: str, now: float | None = None) -> None:
        """Saved at once: Orthanc's job is about to be cancelled."""
        self._taken[job_id] = time.time() if now is None else now
        self._dirty = True
        self.save()

    def add(self, job_id: str, now: float | None = None) -> None:
        self._ids[job_id] = time.time() if now is None else now
        self._dirty = True

    def still_listed(self, job_ids: Iterable[str], now: float | None = None) -> None:
        """Orthanc still lists these: keep them; forget the long gone."""
        now = time.time() if now is None else now
        for job_id in job_ids:
            if job_id in self._ids:
                self._ids[job_id] = now
            if job_id in self._taken:
                self._taken[job_id] = now
        for job_id in [k for k, seen in self._taken.items() if now - seen > _KEEP_GONE]:
            del self._taken[job_id]
            self._dirty = True
        gone = [k for k, seen in self._ids.items() if now - seen > _KEEP_GONE]
        if len(self._ids) - len(gone) > _MAX_IDS:
            newest_first = sorted(self._ids, key=self._ids.__getitem__, reverse=True)
            gone = newest_first[_MAX_IDS:]
        for job_id in gone:
            del self._ids[job_id]
        self._dirty = self._dirty or bool(gone)

    def save(self) -> None:
        """Persist if anything changed (the listing times alone are not worth a write)."""
        if not self._dirty:
            return
        state = {"handled": self._ids, "taken_over": self._taken}
        write_atomic(self.path, json.dumps(state, sort_keys=True) + "\n")
        self._dirty = False
