"""Orthanc's job history forgets: make the loss of a failed send's evidence visible.

Orthanc keeps only its last `JobsHistorySize` finished jobs (default 10). Ingest warns at
start-up when that is below a safe size, and counts the jobs that left the history before
it read how they ended (`sendqueue_orthanc_jobs_missed_total`, with an error in the log).

Orthanc 1.10 shows its configuration over REST only through Lua (`ExecuteLuaEnabled`);
without it the size shows itself: new finished jobs push old ones out while the number
of finished jobs listed stays the same.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sendqueue.services.ingest.metrics import IngestMetrics
from sendqueue.services.ingest.orthanc_jobs import StoreJob
from sendqueue.shared.errors import PermanentError, SourceUnavailable
from sendqueue.shared.orthanc import OrthancClient

log = logging.getLogger(__name__)

#: Below this, a busy Orthanc forgets a failed job between two reads after a short outage
#: of ingest.
SAFE_HISTORY_SIZE = 100
_ORTHANC_DEFAULT = 10
_FINISHED = ("Success", "Failure")


class LostEvidence:
    def __init__(self, metrics: IngestMetrics) -> None:
        self._metrics = metrics
        #: Store jobs seen pending or running at the previous read.
        self._unfinished: set[str] = set()
        #: Finished jobs (of any type) listed at the previous read.
        self._finished_before: set[str] = set()
        #: Orthanc's JobsHistorySize: read through Lua, or seen; None while unknown.
        self.history_size: int | None = None
        self._size_read = False
        self._warned = False

    async def read_history_size(self, orthanc: OrthancClient) -> None:
        try:
            text = await orthanc.run_lua(
                f'print(GetOrthancConfiguration()["JobsHistorySize"] or {_ORTHANC_DEFAULT})'
            )
        except (SourceUnavailable, PermanentError) as exc:
            log.info("could not read Orthanc's JobsHistorySize (%s); will watch its history", exc)
            return
        if text is None:
            log.info(
                "Orthanc does not run Lua over REST (ExecuteLuaEnabled), so its JobsHistorySize"
                " cannot be read; ingest infers it from how its job history turns over"
            )
            return
        try:
            size = int(float(text.strip()))
        except ValueError:
            log.info("Orthanc's JobsHistorySize read as %r: not a number", text[:40])
            return
        self._size_read = True
        self._set_size(size, "read from Orthanc")

    def observe(
        self,
        jobs: Sequence[StoreJob],
        raw_jobs: Sequence[dict[str, Any]],
        listed: set[str],
        handled: frozenset[str],
    ) -> None:
        """One read of the history. Two signs of a loss are certain: a store job seen
        running that is gone unread, and a full history whose every finished job is new
        (at least one more was pushed out between the reads)."""
        vanished = [j for j in self._unfinished if j not in listed and j not in handled]
        finished = {str(j.get("ID")) for j in raw_jobs if j.get("State") in _FINISHED}
        before = self._finished_before
        turned_over = (
            bool(before)
            and not (before & finished)
            and len(finished) >= len(before)
            and len(finished) >= (self.history_size or _ORTHANC_DEFAULT)
        )
        missed = len(vanished) + (1 if turned_over and not vanished else 0)
        if missed:
            self._metrics.orthanc_jobs_missed.inc(missed)
            log.error(
                "%d Orthanc job(s) left Orthanc's job history before ingest could read how they"
                " ended (raise JobsHistorySize in Orthanc's configuration; see docs/orthanc.md):"
                " a failed send among them is not captured",
                missed,
            )
        self._learn_size(finished)
        self._unfinished = {j.id for j in jobs if not j.finished}
        self._finished_before = finished

    def _learn_size(self, finished: set[str]) -> None:
        if self._size_read:
            return
        before = self._finished_before
        pushed_out = bool(before - finished) and bool(finished - before)
        if pushed_out and len(finished) == len(before):
            self._set_size(len(finished), "seen: new jobs push old ones out")

    def _set_size(self, size: int, how: str) -> None:
        self.history_size = size
        if size < SAFE_HISTORY_SIZE and not self._warned:
            self._warned = True
            log.warning(
                "Orthanc's JobsHistorySize is %d (%s): a failed send may leave the history"
                " before ingest reads it; set it to %d or more (docs/orthanc.md)",
                size,
                how,
                SAFE_HISTORY_SIZE,
            )
