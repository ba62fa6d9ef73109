"""ChangesFeed against an in-memory Orthanc: where it starts, when the cursor moves, and
what a round that fails leaves behind."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from sendqueue.services.ingest.cursor import Cursor, CursorFiles
from sendqueue.services.ingest.feed import ChangesFeed
from sendqueue.services.ingest.ledger import QueuedLedger, Resends
from sendqueue.services.ingest.metrics import IngestMetrics
from sendqueue.services.ingest.routing import Router
from sendqueue.shared.config import IngestConfig, RouteConfig
from sendqueue.shared.durations import Duration
from sendqueue.shared.errors import PermanentError, SourceUnavailable
from sendqueue.shared.resolver import Resolver
from sendqueue.shared.schemas import Failure, SendJob, decode_bus_message, decode_job
from sendqueue.shared.topology import Names
from tests.unit.fakes import FakeOrthanc, FakePublisher, eventually

pytestmark = pytest.mark.timeout(10)

NAMES = Names("t")
EVERYTHING_TO_PACS = [RouteConfig(destinations=["pacs"])]


@dataclass
class Ingest:
    """A changes feed on fakes, run in the background by `run_until`."""

    feed: ChangesFeed
    orthanc: FakeOrthanc
    publisher: FakePublisher
    registry: CollectorRegistry
    cursor_file: CursorFiles
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def cursor(self) -> int | None:
        return self.cursor_file.read("changes")

    async def run_until(self, condition: Callable[[], bool]) -> None:
        if self.task is None:
            self.task = asyncio.create_task(self.feed.run(self.stop))
        await eventually(condition)
        assert not self.task.done(), "the feed stopped on its own"

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 5)

    def jobs(self) -> list[SendJob]:
        return [decode_job(p.body) for p in self.publisher.to(NAMES.work_exchange)]

    def queued(self) -> list[tuple[str, str]]:
        return [(job.orthanc_id, job.destination) for job in self.jobs()]

    def failures(self) -> list[Failure]:
        decoded = [decode_bus_message(p.body) for p in self.publisher.to(NAMES.failed_exchange)]
        return [f for f in decoded if isinstance(f, Failure)]

    def errors(self, stage: str) -> float:
        labels = {"stage": stage}
        return self.registry.get_sample_value("sendqueue_ingest_errors_total", labels) or 0.0


MakeIngest = Callable[..., Awaitable[Ingest]]


@pytest.fixture
async def make_ingest(tmp_path: Path) -> AsyncIterator[MakeIngest]:
    made: list[Ingest] = []
    ledgers: list[QueuedLedger] = []

    async def make(
        orthanc: FakeOrthanc,
        *,
        start_from: str = "now",
        routes: list[RouteConfig] | None = None,
        batch_size: int = 100,
        poll_interval: float = 0.01,
        saved_cursor: int | None = None,
    ) -> Ingest:
        config = IngestConfig(
            state_dir=str(tmp_path / "ingest"),
            poll_interval=Duration(poll_interval),
            start_from=start_from,  # type: ignore[arg-type]
            batch_size=batch_size,
        )
        cursor_file = CursorFiles(config.state_dir)
        if saved_cursor is not None:
            cursor_file.write("changes", saved_cursor)
        publisher = FakePublisher()
        registry = CollectorRegistry()
        ledger = QueuedLedger(
            Path(config.state_dir) / "queued.sqlite3",
            max_age=config.ledger_max_age,
            max_entries=config.ledger_max_entries,
        )
        ledgers.append(ledger)
        metrics = IngestMetrics(registry)
        feed = ChangesFeed(
            config=config,
            orthanc=orthanc,  # type: ignore[arg-type]
            resolver=Resolver(orthanc),  # type: ignore[arg-type]
            router=Router(routes or EVERYTHING_TO_PACS),
            publisher=publisher,  # type: ignore[arg-type]
            names=NAMES,
            metrics=metrics,
            cursor=Cursor(cursor_file, "changes"),
            resends=Resends(
                ledger,
                Resolver(orthanc),  # type: ignore[arg-type]
                lambda job: metrics.skipped.labels(job.destination).inc(),
            ),
        )
        ingest = Ingest(feed, orthanc, publisher, registry, cursor_file)
        made.append(ingest)
        return ingest

    yield make
    for ingest in made:
        await ingest.close()
    for ledger in ledgers:
        ledger.close()


def _orthanc(*ids: str, **tags: Any) -> FakeOrthanc:
    orthanc = FakeOrthanc()
    for orthanc_id in ids:
        orthanc.store(orthanc_id, {"SOPInstanceUID": f"1.2.{orthanc_id}", **tags})
    return orthanc


# -- where it starts ------------------------------------------------------------------------


async def test_a_first_start_from_now_skips_what_orthanc_already_holds(make_ingest):
    # Given an Orthanc with two instances, and no saved cursor
    ingest = await make_ingest(_orthanc("old-1", "old-2"), start_from="now")

    # When the feed starts, then a new instance arrives
    await ingest.run_until(lambda: ingest.cursor == 2)
    ingest.orthanc.store("new-1")
    await ingest.run_until(lambda: ingest.cursor == 3)

    # Then only the new instance is queued
    assert ingest.queued() == [("new-1", "pacs")]


async def test_a_first_start_from_the_beginning_queues_everything_orthanc_holds(make_ingest):
    # Given an Orthanc with two instances, and no saved cursor
    ingest = await make_ingest(_orthanc("old-1", "old-2"), start_from="beginning")

    # When the feed starts
    await ingest.run_until(lambda: ingest.cursor == 2)

    # Then both are queued, with their tags
    assert ingest.queued() == [("old-1", "pacs"), ("old-2", "pacs")]
    assert [job.sop_instance_uid for job in ingest.jobs()] == ["1.2.old-1", "1.2.old-2"]


async def test_a_restart_resumes_after_the_saved_cursor(make_ingest):
    # Given a cursor saved after the first of three changes
    ingest = await make_ingest(_orthanc("o1", "o2", "o3"), start_from="beginning", saved_cursor=1)

    # When the feed starts
    await ingest.run_until(lambda: ingest.cursor == 3)

    # Then it queues what came after, and not the first one again
    assert ingest.queued() == [("o2", "pacs"), ("o3", "pacs")]


# -- when the cursor moves ------------------------------------------------------------------


async def test_the_cursor_is_saved_only_after_every_job_of_the_page_is_confirmed(make_ingest):
    # Given a page of three changes, and a look at the cursor file at every publish
    ingest = await make_ingest(_orthanc("o1", "o2", "o3"), start_from="beginning")
    cursor_while_publishing = []
    ingest.publisher.on_publish = lambda _p: cursor_while_publishing.append(ingest.cursor)

    # When the page is queued
    await ingest.run_until(lambda: ingest.cursor == 3)

    # Then the cursor stayed before the page until all three were confirmed
    assert cursor_while_publishing == [0, 0, 0]
    assert len(ingest.jobs()) == 3


async def test_a_publish_not_confirmed_keeps_the_cursor_and_the_round_is_retried(make_ingest):
    # Given a broker that does not confirm publishes
    ingest = await make_ingest(_orthanc("o1", "o2"), start_from="beginning")
    ingest.publisher.refuse()

    # When the feed runs a few rounds
    await ingest.run_until(lambda: ingest.errors("amqp") >= 2)

    # Then the cursor has not moved, and the feed says it is unhealthy
    assert ingest.cursor == 0 and not ingest.feed.healthy
    assert ingest.jobs() == []

    # And once the broker confirms again, the page is queued and the cursor moves
    ingest.publisher.confirm()
    await ingest.run_until(lambda: ingest.cursor == 2)
    assert ingest.queued() == [("o1", "pacs"), ("o2", "pacs")]
    assert ingest.feed.healthy


async def test_a_page_confirmed_in_part_is_queued_again_whole(make_ingest):
    # Given a broker that refuses one publish of the page
    ingest = await make_ingest(_orthanc("o1", "o2"), start_from="beginning")
    ingest.publisher.refuse(1)

    # When the feed runs
    await ingest.run_until(lambda: ingest.cursor == 2)

    # Then every instance is queued; the one confirmed the first time twice (never a gap)
    assert Counter(ingest.queued()) == {("o1", "pacs"): 1, ("o2", "pacs"): 2}
    assert ingest.errors("amqp") == 1


async def test_an_orthanc_whose_changes_restart_below_the_cursor_is_followed_from_zero(
    make_ingest, caplog
):
    # Given a cursor at 50, and an Orthanc whose database was replaced (3 changes)
    ingest = await make_ingest(_orthanc("o1", "o2", "o3"), saved_cursor=50)

    # When the feed runs
    with caplog.at_level(logging.WARNING):
        await ingest.run_until(lambda: ingest.cursor == 3)

    # Then it follows the new database from its first change, and says why
    assert ingest.queued() == [("o1", "pacs"), ("o2", "pacs"), ("o3", "pacs")]
    assert "database was reset" in caplog.text


async def test_pages_that_are_not_done_are_followed_at_once(make_ingest):
    # Given five changes, read two at a time, and a poll interval far beyond the test's
    ingest = await make_ingest(
        _orthanc("o1", "o2", "o3", "o4", "o5"),
        start_from="beginning",
        batch_size=2,
        poll_interval=60,
    )

    # When the feed runs
    await ingest.run_until(lambda: ingest.cursor == 5)

    # Then it read the three pages without waiting, and knows it has caught up
    assert [orthanc_id for orthanc_id, _ in ingest.queued()] == ["o1", "o2", "o3", "o4", "o5"]
    assert ingest.orthanc.asked("/changes") >= 3
    assert ingest.registry.get_sample_value("sendqueue_ingest_lag_changes") == 0
    assert ingest.registry.get_sample_value("sendqueue_ingest_orthanc_last_seq") == 5


# -- an instance Orthanc cannot read --------------------------------------------------------


async def test_an_unreadable_instance_is_tried_three_rounds_then_parked_where_it_may_go(
    make_ingest,
):
    # Given routes on a tag Orthanc does not index, and an instance whose file Orthanc,
    # though up, cannot read (next to one it reads)
    routes = [
        RouteConfig(destinations=["thin"], match={"Modality": "CT", "SliceThickness": "0.*"}),
        RouteConfig(destinations=["mr"], match={"Modality": "MR", "SliceThickness": "*"}),
        RouteConfig(destinations=["all"]),
    ]
    orthanc = FakeOrthanc()
    orthanc.store("bad", {"Modality": "CT"})
    orthanc.store("good", {"Modality": "CT"}, file_tags={"SliceThickness": "0.5"})
    orthanc.errors["/instances/bad/simplified-tags"] = SourceUnavailable(
        "Orthanc answered HTTP 500 on GET /instances/bad/simplified-tags",
        reason_class="source-error",
    )
    ingest = await make_ingest(orthanc, start_from="beginning", routes=routes)

    # When the feed runs
    await ingest.run_until(lambda: ingest.cursor == 2)

    # Then the file was tried in three rounds, the changes behind it were not held up for
    # longer, and the instance is parked for each destination its indexed tags allow
    assert orthanc.asked("/instances/bad/simplified-tags") == 3
    assert ingest.errors("orthanc") == 2
    assert ingest.queued() == [("good", "thin"), ("good", "all")]
    failures = ingest.failures()
    assert [f.destination for f in failures] == ["thin", "all"]
    for failure in failures:
        assert failure.permanent and failure.reason_class == "source-unreadable"
        assert failure.job is not None and failure.job.orthanc_id == "bad"
        assert failure.job.destination == failure.destination


async def test_a_file_failing_while_orthanc_itself_is_down_is_waited_for_and_never_parked(
    make_ingest,
):
    # Given routes on a tag Orthanc does not index, and Orthanc failing the file's tags
    # while its GET /system fails too (it went down between two calls)
    routes = [RouteConfig(destinations=["thin"], match={"SliceThickness": "0.*"})]
    orthanc = FakeOrthanc()
    orthanc.store("o1", file_tags={"SliceThickness": "0.5"})
    orthanc.errors["/instances/o1/simplified-tags"] = SourceUnavailable("HTTP 503")
    orthanc.errors["/system"] = SourceUnavailable("Orthanc unreachable on GET /system")
    ingest = await make_ingest(orthanc, start_from="beginning", routes=routes)

    # When the feed runs more rounds than an unreadable file gets
    await ingest.run_until(lambda: orthanc.asked("/instances/o1/simplified-tags") >= 5)

    # Then nothing is parked and the cursor waits
    assert ingest.failures() == [] and ingest.cursor == 0

    # And once Orthanc is back, the instance is routed on its tags
    orthanc.errors.clear()
    await ingest.run_until(lambda: ingest.cursor == 1)
    assert ingest.queued() == [("o1", "thin")] and ingest.failures() == []


# -- Orthanc down or misconfigured ----------------------------------------------------------


async def test_an_orthanc_that_is_down_leaves_the_cursor_and_the_round_is_retried(make_ingest):
    # Given a cursor at 2, and an Orthanc that is down
    orthanc = _orthanc("o1", "o2", "o3")
    orthanc.up = False
    ingest = await make_ingest(orthanc, saved_cursor=2)

    # When the feed runs a few rounds
    await ingest.run_until(lambda: ingest.errors("orthanc") >= 2)

    # Then nothing moved, and the feed says it is unhealthy
    assert ingest.cursor == 2 and not ingest.feed.healthy and ingest.jobs() == []

    # And when Orthanc is back, the feed goes on where it was
    orthanc.up = True
    await ingest.run_until(lambda: ingest.cursor == 3)
    assert ingest.queued() == [("o3", "pacs")] and ingest.feed.healthy


async def test_a_4xx_on_changes_is_retried_with_an_error_that_points_at_the_url(
    make_ingest, caplog
):
    # Given an [orthanc] url that is not Orthanc's: /changes answers 404
    orthanc = _orthanc("o1")
    orthanc.errors["/changes"] = PermanentError(
        "Orthanc answered HTTP 404 on GET /changes", reason_class="source-4xx"
    )
    ingest = await make_ingest(orthanc, saved_cursor=0)

    # When the feed runs
    with caplog.at_level(logging.WARNING):
        await ingest.run_until(lambda: orthanc.asked("/changes") >= 3)

    # Then it keeps retrying (it does not crash), saying what to check
    assert "is [orthanc] url right?" in caplog.text
    assert not ingest.feed.healthy and ingest.errors("orthanc") >= 2 and ingest.cursor == 0

    # And once the url answers, the feed goes on
    del orthanc.errors["/changes"]
    await ingest.run_until(lambda: ingest.cursor == 1)
    assert ingest.queued() == [("o1", "pacs")]


# -- the look-back window -------------------------------------------------------------------


async def test_a_change_revealed_after_a_later_one_is_queued_once(make_ingest):
    # Given an Orthanc (PostgreSQL, several writers) that shows change 2 only after 3
    ingest = await make_ingest(_orthanc("o1", "o2", "o3"), start_from="beginning")
    late = ingest.orthanc.changes.pop(1)
    await ingest.run_until(lambda: ingest.cursor == 3)
    assert ingest.queued() == [("o1", "pacs"), ("o3", "pacs")]

    # When change 2 becomes visible, below the cursor
    ingest.orthanc.changes.insert(1, late)
    await ingest.run_until(lambda: len(ingest.queued()) == 3)

    # Then it is queued, and nothing else twice, however many rounds run
    asked = ingest.orthanc.asked("/changes")
    await ingest.run_until(lambda: ingest.orthanc.asked("/changes") > asked + 5)
    assert Counter(ingest.queued()) == {("o1", "pacs"): 1, ("o2", "pacs"): 1, ("o3", "pacs"): 1}
    assert ingest.cursor == 3


async def test_a_restart_queues_nothing_twice(make_ingest):
    # Given a feed that queued three changes and stopped
    orthanc = _orthanc("o1", "o2", "o3")
    first = await make_ingest(orthanc, start_from="beginning")
    await first.run_until(lambda: first.cursor == 3)
    await first.close()

    # When it starts again and runs a few rounds over the same Orthanc
    second = await make_ingest(orthanc)
    asked = orthanc.asked("/changes")
    await second.run_until(lambda: orthanc.asked("/changes") > asked + 3)

    # Then the look-back window re-read nothing as new
    assert second.queued() == []


async def test_a_restored_orthanc_that_passed_the_old_cursor_loses_nothing(make_ingest):
    # Given a feed that queued ten changes and stopped
    before = _orthanc(*(f"o{i}" for i in range(1, 11)))
    first = await make_ingest(before, start_from="beginning")
    await first.run_until(lambda: first.cursor == 10)
    await first.close()

    # While it was down, Orthanc was restored from a backup taken at change 6, and then
    # received eight new instances: its change numbers passed the old cursor (10)
    restored = _orthanc(*(f"o{i}" for i in range(1, 7)), *(f"n{i}" for i in range(7, 15)))

    # When the feed starts again
    second = await make_ingest(restored)
    await second.run_until(lambda: second.cursor == 14)

    # Then every new instance is queued, including those numbered 7..10, and none of the
    # old ones again
    assert [orthanc_id for orthanc_id, _ in second.queued()] == [f"n{i}" for i in range(7, 15)]


async def test_a_database_replaced_below_the_window_is_followed_from_the_start(make_ingest, caplog):
    # Given a feed past many changes (more than the look-back window)
    many = [f"o{i}" for i in range(1, 301)]
    first = await make_ingest(_orthanc(*many), start_from="beginning", batch_size=1000)
    await first.run_until(lambda: first.cursor == 300)
    await first.close()

    # When Orthanc comes back with another history of the same length
    other = _orthanc(*(f"x{i}" for i in range(1, 306)))
    second = await make_ingest(other, batch_size=1000)
    with caplog.at_level(logging.WARNING):
        await second.run_until(lambda: second.cursor == 305)

    # Then it follows the new database from its first change, and says why
    assert len(set(second.queued())) == 305
    assert "database was reset or replaced" in caplog.text


async def test_a_state_dir_that_cannot_take_the_cursor_is_retried_not_fatal(make_ingest):
    # Given a state dir that is full for the first saves of the cursor
    import errno

    ingest = await make_ingest(_orthanc("o1", "o2"), start_from="beginning")
    failures = {"left": 3}
    real_write = ingest.cursor_file.write

    def write(name: str, seq: int) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(name, seq)

    ingest.cursor_file.write = write

    # When the feed runs, then it says so and keeps going, and saves once there is room
    await ingest.run_until(lambda: ingest.errors("state") >= 1)
    await ingest.run_until(lambda: ingest.cursor == 2)
    assert {orthanc_id for orthanc_id, _ in ingest.queued()} == {"o1", "o2"}


async def test_a_throttled_file_is_waited_for_and_never_parked(make_ingest):
    # Given routes that need a tag from the file, and an Orthanc that answers 429 on it
    from sendqueue.shared.errors import SourceThrottled

    routes = [RouteConfig(destinations=["thin"], match={"SliceThickness": "0.*"})]
    orthanc = FakeOrthanc()
    orthanc.store("busy", {"Modality": "CT"}, file_tags={"SliceThickness": "0.5"})
    orthanc.errors["/instances/busy/simplified-tags"] = SourceThrottled(
        "Orthanc asked to slow down (HTTP 429 on GET /instances/busy/simplified-tags)"
    )
    ingest = await make_ingest(orthanc, start_from="beginning", routes=routes)

    # When the feed runs many rounds into the throttling
    await ingest.run_until(lambda: orthanc.asked("/instances/busy/simplified-tags") >= 5)

    # Then nothing is parked, and once Orthanc answers, the instance is queued
    assert ingest.failures() == [] and ingest.cursor == 0
    del orthanc.errors["/instances/busy/simplified-tags"]
    await ingest.run_until(lambda: ingest.cursor == 1)
    assert ingest.queued() == [("busy", "thin")]


async def test_orthanc_failing_after_a_page_is_queued_does_not_queue_that_page_again(
    make_ingest,
):
    # Given pages of two, and an Orthanc that goes away once, just after the first page,
    # when ingest asks for its newest change (to measure the lag)
    orthanc = _orthanc("o1", "o2", "o3", "o4", "o5")
    real_get_json = orthanc.get_json
    failures = [SourceUnavailable("Orthanc unreachable on GET /changes: ConnectionResetError")]

    async def get_json(path: str, params: dict[str, str] | None = None) -> Any:
        if path == "/changes" and "last" in (params or {}) and failures:
            raise failures.pop()
        return await real_get_json(path, params)

    orthanc.get_json = get_json
    ingest = await make_ingest(orthanc, start_from="beginning", batch_size=2)

    # When the feed runs to the end
    await ingest.run_until(lambda: ingest.cursor == 5)

    # Then the first page, queued and its cursor saved before Orthanc went away, was not
    # queued a second time
    assert not failures
    assert [orthanc_id for orthanc_id, _ in ingest.queued()] == ["o1", "o2", "o3", "o4", "o5"]
