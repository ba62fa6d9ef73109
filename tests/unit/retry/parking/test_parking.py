"""Parking (queue.py) and its passes (passes.py): park, keep, requeue, delete, rebuild.

The parking queue is in memory (tests.unit.fakes); the index is the real SQLite one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry

from sendqueue.services.retry.metrics import RetryMetrics
from sendqueue.services.retry.parking import passes
from sendqueue.services.retry.parking.index import Filters, ParkedIndex, ParkedItem
from sendqueue.services.retry.parking.passes import Selector
from sendqueue.services.retry.parking.queue import Parking
from sendqueue.shared.errors import NotConfirmed
from sendqueue.shared.schemas import Failure, SendJob, decode_job, encode
from sendqueue.shared.topology import Names
from tests.unit.fakes import FakeConnection, FakeMessage, FakePublisher, FakeQueue

pytestmark = pytest.mark.timeout(10)

NAMES = Names("t")
PARKED = NAMES.parked_exchange
WORK = NAMES.work_exchange


@dataclass
class Room:
    """The parking room on fakes: a confirming publisher whose parked exchange feeds the
    in-memory parking queue, and the real index."""

    parking: Parking
    publisher: FakePublisher
    index: ParkedIndex
    queue: FakeQueue
    registry: CollectorRegistry
    journal: list[str]

    async def park(self, job_id: str = "job-1", destination: str = "pacs") -> ParkedItem:
        job = SendJob(id=job_id, destination=destination, orthanc_id=f"o-{job_id}", attempts=3)
        return await self.parking.park(
            job,
            raw=None,
            destination=destination,
            reason="C-STORE 0xA900",
            reason_class="dimse-a9xx",
        )

    async def run_pass(self, select: Selector, *, to: str | None = None) -> passes.PassResult:
        """One pass; `publisher.published` and the journal then show only what it did."""
        for message in self.queue.ready:
            message.journal = self.journal
        self.publisher.published.clear()
        self.journal.clear()
        return await self.parking.run_pass(select, action="test", to=to)

    def ids(self) -> set[str]:
        return {item.id for item in self.index.page(Filters(), limit=100)}

    def counter(self, name: str, destination: str) -> float | None:
        return self.registry.get_sample_value(name, {"destination": destination})


def keep(_item: ParkedItem) -> passes.Action:
    return "keep"


def requeue(_item: ParkedItem) -> passes.Action:
    return "requeue"


def delete(_item: ParkedItem) -> passes.Action:
    return "delete"


@pytest.fixture
def room(tmp_path) -> Iterator[Room]:
    journal: list[str] = []
    connection = FakeConnection()
    queue = connection.queue(NAMES.parked_queue)
    publisher = FakePublisher(journal)
    publisher.bind(PARKED, queue)
    registry = CollectorRegistry()
    index = ParkedIndex(tmp_path / "parked.sqlite3")
    parking = Parking(
        names=NAMES,
        consume_conn=connection,  # type: ignore[arg-type]
        publisher=publisher,  # type: ignore[arg-type]
        index=index,
        metrics=RetryMetrics(registry),
        destinations=["pacs", "archive"],
    )
    yield Room(parking, publisher, index, queue, registry, journal)
    index.close()


def _stale_item(item_id: str) -> ParkedItem:
    return ParkedItem(id=item_id, destination="pacs", parked_at=time.time() - 3600)


# -- park -----------------------------------------------------------------------------------


async def test_a_parked_job_is_published_first_and_indexed_once_confirmed(room):
    # Given a look at the index at the moment of the publish
    indexed_while_publishing = []
    room.publisher.on_publish = lambda _p: indexed_while_publishing.append(room.index.count())

    # When a job is parked
    item = await room.park()

    # Then it was published before it was indexed
    assert indexed_while_publishing == [0]
    (message,) = room.queue.ready
    assert message.message_id == item.id and message.routing_key == "pacs"
    assert message.headers["reason"] == "C-STORE 0xA900"
    assert message.headers["reason_class"] == "dimse-a9xx"
    job = decode_job(message.body)
    assert job.parked_at == item.parked_at and job.last_error == "C-STORE 0xA900"
    # and the index row carries what listing and filters need
    (indexed,) = room.index.page(Filters(reason_class="dimse-a9xx"), limit=10)
    assert indexed == item and (indexed.orthanc_id, indexed.attempts) == ("o-job-1", 3)
    labels = {"destination": "pacs", "reason": "dimse-a9xx"}
    assert room.registry.get_sample_value("sendqueue_jobs_parked_total", labels) == 1


async def test_a_park_not_confirmed_raises_and_indexes_nothing(room):
    # Given a broker that does not confirm publishes
    room.publisher.refuse()

    # When a job is parked, then the caller learns it failed, and nothing is indexed
    with pytest.raises(NotConfirmed):
        await room.park()
    assert room.index.count() == 0 and room.parking.parks == 0


# -- one pass: keep, requeue, delete --------------------------------------------------------


async def test_keep_publishes_each_message_again_then_acks_the_original(room):
    # Given two parked jobs, one of them carrying broker headers (dead-lettered once)
    first, second = await room.park("job-1"), await room.park("job-2")
    room.queue.ready[1].headers["x-death"] = [{"reason": "rejected"}]
    originals = list(room.queue.ready)

    # When a pass keeps everything
    result = await room.run_pass(keep)

    # Then each was published again (same id, no x- headers) before the originals were acked
    assert room.journal == [f"publish {PARKED} pacs"] * 2 + ["ack"] * 2
    assert [m.outcomes for m in originals] == [["ack"], ["ack"]]
    copies = list(room.queue.ready)
    assert [m.message_id for m in copies] == [first.id, second.id]
    assert [m.body for m in copies] == [m.body for m in originals]
    assert not any(key.startswith("x-") for m in copies for key in m.headers)
    assert (result.total, result.done, result.kept, result.complete) == (2, 2, 2, True)
    assert room.ids() == {first.id, second.id}


async def test_a_requeue_to_the_jobs_own_destination_dead_letters_it_without_a_publish(room):
    # Given a parked job of pacs
    item = await room.park()

    # When a pass requeues it to where it came from
    result = await room.run_pass(requeue)

    # Then RabbitMQ moves it (rejected, dead-lettered to the work exchange): nothing published
    (original,) = room.queue.taken
    assert original.outcomes == ["reject"] and room.queue.dead_lettered == [original]
    assert room.publisher.published == [] and len(room.queue.ready) == 0
    assert (result.requeued, result.by_destination) == (1, {"pacs": 1})
    assert item.id not in room.ids()
    assert room.counter("sendqueue_jobs_requeued_total", "pacs") == 1


async def test_a_requeue_to_another_destination_publishes_a_fresh_copy_journaled_before_the_ack(
    room,
):
    # Given a parked job of pacs
    item = await room.park()
    journaled_at_ack = []

    async def look_at_the_journal() -> None:
        journaled_at_ack.append(room.index.requeued_before([item.id]))

    room.queue.ready[0].on_ack = look_at_the_journal

    # When a pass requeues it to archive
    result = await room.run_pass(requeue, to="archive")

    # Then a fresh copy addressed to archive was confirmed, journaled, and only then the ack
    (copy,) = room.publisher.to(WORK)
    assert copy.routing_key == "archive"
    job = decode_job(copy.body)
    assert (job.destination, job.attempts, job.parked_at, job.last_error) == (
        "archive",
        0,
        None,
        "",
    )
    assert copy.headers["destination"] == "archive"
    assert journaled_at_ack == [{item.id}]
    assert room.queue.taken[0].outcomes == ["ack"]
    assert (result.requeued, result.by_destination) == (1, {"archive": 1})
    # the pass was complete: the journal has done its job and is cleared
    assert not room.index.has_requeued() and room.ids() == set()


async def test_delete_acks_the_message_and_publishes_nothing(room):
    # Given a parked job
    item = await room.park()

    # When a pass deletes it
    result = await room.run_pass(delete)

    # Then it is acked away and forgotten
    assert room.queue.taken[0].outcomes == ["ack"]
    assert room.publisher.published == [] and len(room.queue.ready) == 0
    assert (result.deleted, result.kept) == (1, 0) and item.id not in room.ids()
    assert room.counter("sendqueue_jobs_deleted_total", "pacs") == 1


# -- copies that must go --------------------------------------------------------------------


async def test_an_item_already_journaled_as_requeued_is_dropped(room):
    # Given a parked item whose requeued copy was confirmed by a pass that died before its ack
    item = await room.park()
    room.index.journal_requeued([item.id])

    # When the next pass runs, whatever it selects
    result = await room.run_pass(keep)

    # Then the original is dropped instead of being kept (or sent twice)
    assert room.queue.taken[0].outcomes == ["ack"]
    assert room.publisher.published == [] and len(room.queue.ready) == 0
    assert (result.kept, result.requeued, result.deleted) == (0, 0, 0)
    assert room.ids() == set() and not room.index.has_requeued()


@pytest.mark.parametrize("batch", [1, 200], ids=["other-batch", "same-batch"])
async def test_a_second_copy_of_an_item_seen_in_this_pass_is_dropped(room, monkeypatch, batch):
    # Given a parked item left twice in the queue (a pass died after re-parking it but
    # before acking the original)
    monkeypatch.setattr(passes, "_BATCH", batch)
    item = await room.park()
    original = room.queue.ready[0]
    room.queue.put(
        FakeMessage(
            original.body,
            headers=dict(original.headers),
            routing_key="pacs",
            message_id=original.message_id,
        )
    )

    # When a pass keeps everything
    result = await room.run_pass(keep)

    # Then one copy is kept and the other dropped, and the kept one is still listed
    assert [m.outcomes for m in room.queue.taken] == [["ack"], ["ack"]]
    assert [m.message_id for m in room.queue.ready] == [item.id]
    assert (result.total, result.kept) == (2, 1) and room.ids() == {item.id}


# -- failures and incomplete passes ---------------------------------------------------------


@pytest.mark.parametrize(
    ("select", "to", "break_it"),
    [
        (keep, None, "refuse"),
        (requeue, "archive", "refuse"),
        (requeue, "nowhere", None),
    ],
    ids=["keep-not-confirmed", "copy-not-confirmed", "unknown-destination"],
)
async def test_an_action_that_fails_leaves_the_message_unacked_and_is_counted(
    room, select, to, break_it
):
    # Given a parked job, a stale index row, and an action that will fail
    item = await room.park()
    room.index.add([_stale_item("stale")])
    if break_it == "refuse":
        room.publisher.refuse()

    # When a pass runs
    result = await room.run_pass(select, to=to)

    # Then the message is back in the queue unsettled, counted as failed, still indexed
    (message,) = room.queue.ready
    assert message.message_id == item.id and not message.settled
    assert result.failed == 1 and (result.kept, result.requeued) == (0, 0)
    assert item.id in room.ids()
    # and a pass that failed somewhere does not rebuild the index
    assert "stale" in room.ids()


async def test_a_pass_over_a_queue_that_goes_silent_ends_incomplete(room, monkeypatch):
    # Given a queue said to hold 3 messages, of which only one arrives (someone else took
    # the rest), a stale index row and a journal entry
    monkeypatch.setattr(passes, "_IDLE_END", 0.05)
    await room.park()
    room.queue.reported_count = 3
    room.index.add([_stale_item("stale")])
    room.index.journal_requeued(["gone"])

    # When a pass deletes what it finds
    result = await room.run_pass(delete)

    # Then it ends, incomplete, without rebuilding the index or clearing the journal
    assert (result.total, result.done, result.deleted, result.complete) == (3, 1, 1, False)
    assert room.ids() == {"stale"} and room.index.has_requeued()


async def test_a_pass_that_comes_round_to_its_own_copies_leaves_them_parked(room, monkeypatch):
    # Given a queue said to hold 3 messages, of which only one is still there (a shovel
    # took the others meanwhile)
    monkeypatch.setattr(passes, "_IDLE_END", 0.05)
    item = await room.park()
    room.queue.reported_count = 3

    # When a pass keeps everything, and so meets the copy it published itself
    result = await room.run_pass(keep)

    # Then it stops there: the copy stays parked and listed, the pass is incomplete
    assert [m.message_id for m in room.queue.ready] == [item.id]
    assert not room.queue.ready[0].settled
    assert (result.done, result.kept, result.complete) == (1, 1, False)
    assert room.ids() == {item.id}


async def test_a_job_parked_during_a_pass_that_reads_past_its_end_stays_parked(room, monkeypatch):
    # Given a queue said to hold 2 messages, of which only one is still there, and a job
    # parked while the pass acks that one
    monkeypatch.setattr(passes, "_IDLE_END", 0.05)
    await room.park("job-1")
    room.queue.reported_count = 2
    parked_meanwhile = []

    async def park_another() -> None:
        parked_meanwhile.append(await room.park("job-2"))

    room.queue.ready[0].on_ack = park_another

    # When a pass deletes what it finds
    result = await room.run_pass(delete)

    # Then the newcomer, though the pass reached it, is neither deleted nor dropped
    (newcomer,) = parked_meanwhile
    assert [m.message_id for m in room.queue.ready] == [newcomer.id]
    assert (result.deleted, result.complete) == (1, False)
    assert room.ids() == {newcomer.id}


async def test_items_parked_during_a_pass_keep_their_index_rows(room):
    # Given one parked job, and another parked while the pass is acking the first
    await room.park("job-1")
    parked_meanwhile = []

    async def park_another() -> None:
        parked_meanwhile.append(await room.park("job-2"))

    room.queue.ready[0].on_ack = park_another

    # When a pass deletes what it finds
    result = await room.run_pass(delete)

    # Then the pass handled only what the queue held when it began, and the newcomer stays
    (newcomer,) = parked_meanwhile
    assert (result.total, result.deleted) == (1, 1)
    assert [m.message_id for m in room.queue.ready] == [newcomer.id]
    assert room.ids() == {newcomer.id}


async def test_a_complete_pass_rebuilds_the_index_from_the_queue_and_clears_the_journal(room):
    # Given an index that drifted from the queue: a row whose message was purged, a message
    # that was never indexed, and an old journal entry
    indexed = await room.park("job-1")
    room.index.add([_stale_item("purged")])
    room.index.journal_requeued(["long-gone"])
    job = SendJob(id="job-9", destination="pacs", orthanc_id="o9", parked_at=time.time())
    headers = {"destination": "pacs", "reason_class": "dimse-a9xx"}
    room.queue.put(
        FakeMessage(encode(job), headers=headers, routing_key="pacs", message_id="unindexed")
    )

    # When a complete pass keeps everything
    result = await room.run_pass(keep)

    # Then the index holds exactly what the queue holds, and the journal is empty
    assert result.complete and result.failed == 0
    assert room.ids() == {indexed.id, "unindexed"}
    assert not room.index.has_requeued()


async def test_the_queue_depth_is_what_the_broker_says(room):
    # Given two parked jobs
    await room.park("job-1")
    await room.park("job-2")

    # Then the depth comes from a passive declaration
    assert await room.parking.queue_depth() == 2


async def test_a_failure_report_dead_lettered_into_parking_is_listed_and_requeued_as_its_job(
    room,
):
    # Given a failure report the failed queue dead-lettered into the parking queue (the
    # retry service crashed on it past the delivery limit): a Failure body, not a job
    job = SendJob(id="job-9", destination="pacs", orthanc_id="o-9", patient_id="P9", attempts=2)
    report = Failure(
        destination="pacs", job=job, permanent=False, reason="C-STORE 0xA700", reason_class="x"
    )
    room.queue.put(
        FakeMessage(
            encode(report),
            headers={"destination": "pacs", "x-death": [{"reason": "delivery_limit"}]},
            routing_key="pacs",
            message_id="m-9",
        )
    )

    # When a pass rebuilds the index, then one requeues it
    await room.run_pass(keep)
    (listed,) = room.index.page(Filters(), limit=10)
    result = await room.run_pass(requeue)

    # Then it was listed with its job's details, and requeue sent the job itself (the
    # sender could not take a failure report), fresh, to its destination
    assert (listed.orthanc_id, listed.patient_id, listed.reason_class) == (
        "o-9",
        "P9",
        "delivery-limit",
    )
    (copy,) = room.publisher.to(WORK)
    requeued = decode_job(copy.body)
    assert (requeued.id, requeued.destination, requeued.attempts) == ("job-9", "pacs", 0)
    assert result.requeued == 1 and room.queue.dead_lettered == []
