"""FailureRouter: the retry service's decision table for a failure report, row by row."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from sendqueue.services.retry import policy
from sendqueue.services.retry.delays import DelayLedger
from sendqueue.services.retry.failures import FailureRouter
from sendqueue.services.retry.metrics import RetryMetrics
from sendqueue.services.retry.parking.index import Filters, ParkedIndex, ParkedItem
from sendqueue.services.retry.parking.queue import Parking
from sendqueue.shared.config import Config, DicomDestinationConfig, RetryConfig
from sendqueue.shared.durations import Duration
from sendqueue.shared.schemas import Failure, SendJob, decode_job, encode
from sendqueue.shared.topology import Names, jittered_ttls
from tests.unit.fakes import FakeConnection, FakeMessage, FakePublisher, Published

pytestmark = pytest.mark.timeout(10)

NAMES = Names("t")
PARKED = NAMES.parked_exchange
CONFIG = Config(
    destinations=[
        DicomDestinationConfig(name="pacs", host="127.0.0.1"),
        DicomDestinationConfig(
            name="slow", host="127.0.0.1", delays=[Duration(300)], max_attempts=2
        ),
    ],
    retry=RetryConfig(delays=[Duration(10), Duration(60)], max_attempts=3, jitter=0.2),
)
FAILED_AT = 1_700_000_000.0


@dataclass
class RetryService:
    router: FailureRouter
    publisher: FakePublisher
    index: ParkedIndex
    ledger: DelayLedger
    registry: CollectorRegistry
    journal: list[str]

    async def take(
        self, body: bytes, *, headers: dict[str, Any] | None = None, routing_key: str = "pacs"
    ) -> FakeMessage:
        """The broker delivers one message of the failed queue."""
        message = FakeMessage(body, headers=headers, routing_key=routing_key, journal=self.journal)
        await self.router.on_message(message)  # type: ignore[arg-type]
        return message

    async def report(self, failure: Failure) -> FakeMessage:
        return await self.take(encode(failure), headers={"destination": failure.destination})

    def delayed(self) -> list[Published]:
        return [p for p in self.publisher.published if p.exchange.startswith("t.delay.")]

    def parked(self) -> Published:
        (parked,) = self.publisher.to(PARKED)
        return parked

    def indexed(self) -> list[ParkedItem]:
        return self.index.page(Filters(), limit=10)


@pytest.fixture
def retry(tmp_path, no_publish_pause) -> Iterator[RetryService]:
    journal: list[str] = []
    publisher = FakePublisher(journal)
    registry = CollectorRegistry()
    metrics = RetryMetrics(registry)
    index = ParkedIndex(tmp_path / "parked.sqlite3")
    ledger = DelayLedger(tmp_path / "delays.sqlite3")
    parking = Parking(
        names=NAMES,
        consume_conn=FakeConnection(),  # type: ignore[arg-type]
        publisher=publisher,  # type: ignore[arg-type]
        index=index,
        metrics=metrics,
        destinations=["pacs", "slow"],
    )
    router = FailureRouter(
        config=CONFIG,
        names=NAMES,
        publisher=publisher,  # type: ignore[arg-type]
        parking=parking,
        metrics=metrics,
        ledger=ledger,
    )
    yield RetryService(router, publisher, index, ledger, registry, journal)
    ledger.close()
    index.close()


def _job(**changes: Any) -> SendJob:
    return SendJob(**{"id": "job-1", "destination": "pacs", "orthanc_id": "o1", **changes})


def _failure(job: SendJob | None = None, **changes: Any) -> Failure:
    fields: dict[str, Any] = {
        "destination": "pacs",
        "job": job if job is not None else _job(),
        "permanent": False,
        "reason": "C-STORE 0xA700",
        "reason_class": "dimse-a7xx",
        "failed_at": FAILED_AT,
        **changes,
    }
    return Failure(**fields)


def _tiers(delay: float) -> dict[str, float]:
    """The delay exchanges that serve a configured delay, with their TTLs."""
    return {NAMES.delay(ttl): ttl for ttl in jittered_ttls(delay, CONFIG.retry.jitter)}


# -- retried --------------------------------------------------------------------------------


async def test_a_first_failure_goes_to_the_first_delay_tier_and_is_counted(retry):
    # Given a failed first attempt of a configured destination
    # When its report is routed
    message = await retry.report(_failure())

    # Then the job is published to one of the first delay's tiers, then the report acked
    (delayed,) = retry.delayed()
    assert delayed.exchange in _tiers(10) and delayed.routing_key == "pacs"
    assert retry.journal == [f"publish {delayed.exchange} pacs", "ack"]
    assert message.outcomes == ["ack"]
    # with the attempt counted in the job itself
    job = decode_job(delayed.body)
    assert (job.attempts, job.first_failed_at, job.last_failed_at) == (1, FAILED_AT, FAILED_AT)
    assert (job.last_error, job.reason_class) == ("C-STORE 0xA700", "dimse-a7xx")
    assert delayed.headers["attempts"] == 1 and delayed.headers["reason"] == "C-STORE 0xA700"
    # and the delay ledger and metrics know it waits there
    assert retry.ledger.waiting("pacs") == {"10s": 1}
    labels = {"destination": "pacs", "tier": "10s"}
    assert retry.registry.get_sample_value("sendqueue_jobs_retried_total", labels) == 1
    assert retry.publisher.to(PARKED) == [] and retry.indexed() == []


async def test_a_further_failure_climbs_the_ladder_and_keeps_its_first_failure_time(retry):
    # Given a job that failed once before
    job = _job(attempts=1, first_failed_at=FAILED_AT - 100, last_failed_at=FAILED_AT - 100)

    # When its second failure is routed
    await retry.report(_failure(job))

    # Then it waits in the second delay's tiers
    (delayed,) = retry.delayed()
    assert delayed.exchange in _tiers(60)
    again = decode_job(delayed.body)
    assert (again.attempts, again.first_failed_at, again.last_failed_at) == (
        2,
        FAILED_AT - 100,
        FAILED_AT,
    )
    assert retry.ledger.waiting("pacs") == {"1m": 1}


async def test_the_delay_tiers_chosen_spread_over_the_jitter_and_no_further(retry, monkeypatch):
    # Given many first failures at once (a burst), tiers picked by a seeded generator
    monkeypatch.setattr(policy, "random", random.Random(7))
    for n in range(40):
        await retry.report(_failure(_job(id=f"job-{n}")))

    # Then each went to a tier between 10 s and 10 s + 20 %, and not all to the same one
    tiers = _tiers(10)
    used = {p.exchange for p in retry.delayed()}
    assert used <= tiers.keys() and len(used) > 1
    assert all(10 <= tiers[exchange] <= 12 for exchange in used)
    assert retry.ledger.waiting("pacs") == {"10s": 40}


async def test_a_destination_with_its_own_ladder_uses_it(retry):
    # Given a destination configured with delays [5m] and max_attempts 2
    # When its first failure is routed
    await retry.report(_failure(_job(destination="slow"), destination="slow"))

    # Then it waits 5 minutes
    (delayed,) = retry.delayed()
    assert delayed.exchange in _tiers(300) and delayed.routing_key == "slow"


async def test_a_retry_after_longer_than_the_next_delay_picks_a_longer_tier(retry):
    # Given a peer that asked to come back in 45 s
    # When the failure is routed
    await retry.report(_failure(retry_after=45.0))

    # Then the job waits in the shortest delay honouring that
    (delayed,) = retry.delayed()
    assert delayed.exchange in _tiers(60)


# -- parked ---------------------------------------------------------------------------------


async def test_a_permanent_failure_is_parked_with_its_reason_then_acked(retry):
    # Given a failure the peer says is final
    failure = _failure(permanent=True, reason="C-STORE 0xA900", reason_class="dimse-a9xx")

    # When it is routed
    await retry.report(failure)

    # Then the job is parked (confirmed) with the reason, indexed, then the report acked
    parked = retry.parked()
    assert retry.journal == [f"publish {PARKED} pacs", "ack"]
    assert (parked.headers["reason"], parked.headers["reason_class"]) == (
        "C-STORE 0xA900",
        "dimse-a9xx",
    )
    job = decode_job(parked.body)
    assert job.parked_at is not None and job.attempts == 1 and job.last_error == "C-STORE 0xA900"
    (item,) = retry.indexed()
    assert (item.id, item.reason_class, item.destination) == (
        parked.message_id,
        "dimse-a9xx",
        "pacs",
    )
    labels = {"destination": "pacs", "reason": "dimse-a9xx"}
    assert retry.registry.get_sample_value("sendqueue_jobs_parked_total", labels) == 1
    assert retry.delayed() == [] and retry.ledger.waiting("pacs") == {}


@pytest.mark.parametrize(
    ("destination", "attempts_before", "max_attempts"), [("pacs", 2, 3), ("slow", 1, 2)]
)
async def test_a_job_out_of_attempts_is_parked_with_its_last_error(
    retry, destination, attempts_before, max_attempts
):
    # Given a job whose failure uses its last attempt
    job = _job(destination=destination, attempts=attempts_before)

    # When the failure is routed
    await retry.report(_failure(job, destination=destination))

    # Then it is parked, saying it gave up and why
    parked = retry.parked()
    assert parked.headers["reason"] == (
        f"gave up after {max_attempts} attempts; last error: C-STORE 0xA700"
    )
    assert parked.headers["reason_class"] == "dimse-a7xx"
    assert decode_job(parked.body).attempts == max_attempts
    assert retry.delayed() == []


async def test_a_failure_of_an_unknown_destination_is_parked_instead_of_delayed(retry):
    # Given a failure of a destination no longer in the config
    job = _job(destination="removed")

    # When it is routed
    await retry.report(_failure(job, destination="removed"))

    # Then it is parked as unknown-destination (a tier would dead-letter it nowhere)
    parked = retry.parked()
    assert parked.routing_key == "removed"
    assert parked.headers["reason_class"] == "unknown-destination"
    assert parked.headers["reason"] == "unknown destination 'removed'"
    assert retry.delayed() == []


async def test_a_job_dead_lettered_by_the_delivery_limit_is_parked_as_such(retry):
    # Given a work message RabbitMQ dead-lettered after 20 deliveries without an outcome
    job = _job()
    death = {"reason": "delivery_limit", "queue": "t.work.pacs", "count": 1}

    # When it reaches the failed queue
    message = await retry.take(encode(job), headers={"x-death": [death], "destination": "pacs"})

    # Then it is parked as delivery-limit, saying RabbitMQ's reason
    parked = retry.parked()
    assert parked.headers["reason_class"] == "delivery-limit"
    assert "dead-lettered by RabbitMQ (delivery_limit)" in parked.headers["reason"]
    parked_job = decode_job(parked.body)
    assert parked_job.id == "job-1" and parked_job.last_failed_at is not None
    assert message.outcomes == ["ack"]


async def test_a_failure_without_a_job_parks_the_raw_message(retry):
    # Given the sender's report of a work message it could not decode
    failure = Failure(
        destination="pacs",
        raw=b"\x00garbage",
        permanent=True,
        reason="message could not be decoded: bad JSON",
        reason_class="decode-error",
    )

    # When it is routed
    await retry.report(failure)

    # Then the raw message is parked verbatim, with the sender's reason
    parked = retry.parked()
    assert parked.body == b"\x00garbage"
    assert parked.headers["reason"] == "message could not be decoded: bad JSON"
    assert parked.headers["reason_class"] == "decode-error"
    (item,) = retry.indexed()
    assert item.destination == "pacs" and item.reason_class == "decode-error"


@pytest.mark.parametrize(
    ("headers", "destination"),
    [({"destination": "pacs"}, "pacs"), (None, "routing-key-dest")],
    ids=["destination-header", "routing-key"],
)
async def test_an_undecodable_message_is_parked_verbatim_as_a_decode_error(
    retry, headers, destination
):
    # Given something on the failed queue that is neither job nor failure
    body = b"{not json"

    # When it is routed
    message = await retry.take(body, headers=headers, routing_key="routing-key-dest")

    # Then it is parked verbatim under its destination, then acked
    parked = retry.parked()
    assert (parked.body, parked.routing_key) == (body, destination)
    assert parked.headers["reason_class"] == "decode-error"
    assert message.outcomes == ["ack"]


async def test_an_unexpected_error_parks_the_message_verbatim_as_internal(retry):
    # Given a dead-lettered job whose x-death header is malformed (hand-published)
    body = encode(_job())

    # When it is routed
    message = await retry.take(body, headers={"x-death": ["oops"], "destination": "pacs"})

    # Then the message is parked verbatim with the error as its reason, then acked
    parked = retry.parked()
    assert parked.body == body and parked.headers["reason_class"] == "internal"
    assert parked.headers["reason"].startswith("internal error while routing this failure")
    assert "AttributeError" in parked.headers["reason"]
    assert message.outcomes == ["ack"]


# -- publishes not confirmed ----------------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [_failure(), _failure(permanent=True)],
    ids=["retry", "park"],
)
async def test_a_publish_not_confirmed_sends_the_report_back_with_a_nack(retry, failure):
    # Given a broker that does not confirm publishes
    retry.publisher.refuse()

    # When a failure is routed
    message = await retry.report(failure)

    # Then the report goes back to its queue; nothing was counted or indexed
    assert message.outcomes == ["nack requeue"]
    assert retry.indexed() == [] and retry.ledger.waiting("pacs") == {}


# -- faults of the service's own state (SQLite errors, a full state_dir) --------------------
# The queues are the truth; the SQLite files only index them: the message is settled
# once, never left unacked, never scheduled or parked twice.

DISK_FULL = sqlite3.OperationalError("database or disk is full")


def _fail(*_args: object, **_kwargs: object) -> None:
    raise DISK_FULL


async def test_a_delay_ledger_that_cannot_write_still_schedules_the_retry_once(
    retry: RetryService, monkeypatch
):
    # Given a delay ledger whose disk is full
    monkeypatch.setattr(retry.ledger, "add", _fail)

    # When a transient failure is reported
    message = await retry.report(_failure(_job(attempts=0)))

    # Then the retry is scheduled once, the report acked, nothing parked
    (delayed,) = retry.delayed()
    assert decode_job(delayed.body).attempts == 1
    assert message.outcomes == ["ack"]
    assert retry.publisher.to(PARKED) == []


async def test_a_parked_index_that_cannot_write_still_parks_once(retry: RetryService, monkeypatch):
    # Given a parked index whose disk is full
    monkeypatch.setattr(retry.index, "add", _fail)

    # When a permanent failure is reported
    message = await retry.report(_failure(_job(), permanent=True))

    # Then the job is parked once (the index is rebuilt from the queue later), and the
    # report acked: not parked a second time by the crash handler, not returned
    parked = retry.parked()
    assert decode_job(parked.body).id == "job-1"
    assert message.outcomes == ["ack"]


async def test_a_state_that_cannot_write_at_all_still_settles_the_message(
    retry: RetryService, monkeypatch
):
    # Given an index and a ledger that both fail, and a broker that refuses to park
    monkeypatch.setattr(retry.index, "add", _fail)
    monkeypatch.setattr(retry.ledger, "add", _fail)
    retry.publisher.refuse()

    # When a report arrives, then it is settled (returned to the queue, bounded by the
    # delivery limit), never left unacked holding a slot
    message = await retry.report(_failure(_job(), permanent=True))
    assert message.outcomes == ["nack requeue"]
