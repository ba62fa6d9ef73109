"""Property-based tests (hypothesis) of what comes from outside: bus messages and config.

- Any bytes on the bus decode to a message or raise msgspec.DecodeError; nothing else.
- Whatever a consumer is handed, it settles the message once, and an acked message was
  replaced by something confirmed (a report, a retry, a parked copy): nothing is lost,
  no consumer crashes or hangs.
- Any TOML document, any file content, loads to a Config or raises ConfigError.
"""

from __future__ import annotations

import asyncio
import contextlib
import string
import tempfile
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sendqueue.shared.config import Config, load_config, parse_config
from sendqueue.shared.errors import ConfigError
from sendqueue.shared.schemas import (
    Failure,
    SendJob,
    decode_bus_message,
    decode_control,
    decode_job,
    decode_status,
    encode,
)

pytestmark = pytest.mark.timeout(300)

QUICK = settings(
    max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None
)

# -- values -----------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
texts = st.text(max_size=40)
jobs = st.builds(
    SendJob,
    id=texts,
    destination=texts,
    orthanc_id=texts,
    sop_instance_uid=texts,
    patient_id=texts,
    attempts=st.integers(min_value=0, max_value=10**6),
    queued_at=st.floats(allow_nan=False, allow_infinity=False),
    parked_at=st.none() | st.floats(allow_nan=False, allow_infinity=False),
)
failures = st.builds(
    Failure,
    destination=texts,
    job=st.none() | jobs,
    raw=st.none() | st.binary(max_size=50),
    permanent=st.booleans(),
    reason=texts,
    reason_class=texts,
    retry_after=st.none() | st.floats(allow_nan=False, min_value=0, max_value=1e6),
)


def _mutated(message: dict[str, Any], key: str, value: Any) -> bytes:
    return msgspec.json.encode({**message, key: value})


#: Bodies a queue may hold: noise, JSON of any shape, real messages, real messages with one
#: field of the wrong kind.
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(msgspec.json.encode),
    jobs.map(encode),
    failures.map(encode),
    st.tuples(jobs, st.sampled_from(["id", "attempts", "type", "destination"]), json_values).map(
        lambda t: _mutated(msgspec.to_builtins(t[0]) | {"type": "job"}, t[1], t[2])
    ),
)

# -- decoding ---------------------------------------------------------------------------------


@QUICK
@given(body=bodies)
def test_any_body_decodes_or_raises_a_decode_error(body: bytes) -> None:
    for decode in (decode_bus_message, decode_job, decode_control, decode_status):
        with contextlib.suppress(msgspec.DecodeError):  # anything else fails the test
            decode(body)


@QUICK
@given(job=jobs)
def test_a_job_survives_the_bus_unchanged(job: SendJob) -> None:
    assert decode_job(encode(job)) == job
    assert decode_bus_message(encode(job)) == job


@QUICK
@given(failure=failures)
def test_a_failure_report_survives_the_bus_unchanged(failure: Failure) -> None:
    assert decode_bus_message(encode(failure)) == failure


# -- consumers: settled once, nothing lost ------------------------------------------------------


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(
    body=bodies, headers=st.dictionaries(st.sampled_from(["destination", "x-death"]), json_values)
)
def test_the_retry_service_settles_any_report_and_loses_nothing(
    body: bytes, headers: dict[str, Any]
) -> None:
    from tests.unit.fakes import FakeMessage

    async def scenario() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            router, publisher, closing = _retry_router(Path(tmp))
            try:
                message = FakeMessage(body, headers=headers, routing_key="pacs")
                async with asyncio.timeout(10):
                    await router.on_message(message)
                assert len(message.outcomes) == 1, message.outcomes
                if message.outcomes == ["ack"]:
                    assert publisher.published, "acked, but nothing replaced it"
            finally:
                for close in closing:
                    close()

    asyncio.run(scenario())


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(body=bodies)
def test_the_sender_settles_any_work_message_and_loses_nothing(body: bytes) -> None:
    from tests.unit.fakes import FakeMessage
    from tests.unit.sender.test_consumer import _start

    async def scenario() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            sender = await _start(Path(tmp))
            try:
                message = FakeMessage(body, routing_key="pacs")
                async with asyncio.timeout(10):
                    await sender.queue.deliver(message)
                assert len(message.outcomes) == 1, message.outcomes
                if message.outcomes == ["ack"]:
                    replaced = bool(sender.publisher.published or sender.destination.received)
                    assert replaced, "acked, but neither delivered nor reported"
            finally:
                await sender.consumer.stop(grace=0)

    asyncio.run(scenario())


def _retry_router(tmp: Path) -> tuple[Any, Any, list[Any]]:
    from prometheus_client import CollectorRegistry

    from sendqueue.services.retry.delays import DelayLedger
    from sendqueue.services.retry.failures import FailureRouter
    from sendqueue.services.retry.metrics import RetryMetrics
    from sendqueue.services.retry.parking.index import ParkedIndex
    from sendqueue.services.retry.parking.queue import Parking
    from sendqueue.shared.topology import Names
    from tests.unit.fakes import FakeConnection, FakePublisher
    from tests.unit.retry.test_failures import CONFIG

    names = Names("t")
    publisher = FakePublisher()
    metrics = RetryMetrics(CollectorRegistry())
    index = ParkedIndex(tmp / "parked.sqlite3")
    ledger = DelayLedger(tmp / "delays.sqlite3")
    parking = Parking(
        names=names,
        consume_conn=FakeConnection(),  # type: ignore[arg-type]
        publisher=publisher,  # type: ignore[arg-type]
        index=index,
        metrics=metrics,
        destinations=["pacs", "slow"],
    )
    router = FailureRouter(
        config=CONFIG,
        names=names,
        publisher=publisher,  # type: ignore[arg-type]
        parking=parking,
        metrics=metrics,
        ledger=ledger,
    )
    return router, publisher, [index.close, ledger.close]


# -- config loading -----------------------------------------------------------------------------

SECTIONS = ["amqp", "orthanc", "ingest", "sender", "retry", "routes", "destinations"]
KEYS = [
    "url", "prefix", "listen", "state_dir", "timeout", "delays", "max_attempts", "jitter",
    "name", "kind", "host", "port", "called_aet", "concurrency", "match", "destinations",
    "admin_token", "admin_tokens", "poll_interval", "batch_size", "start_from", "tls",
    "http_timeout", "spool_dir", "probe_min", "probe_max", "headers", "username", "password",
]  # fmt: skip
durations = st.sampled_from(["1s", "10ms", "2h", "-1s", "0s", "1e309s", "s", "", "1 day"])
config_values = st.one_of(json_values, durations, st.lists(durations, max_size=3))
tables = st.dictionaries(st.sampled_from(KEYS), config_values, max_size=6)
documents = st.dictionaries(
    st.sampled_from(SECTIONS),
    st.one_of(tables, st.lists(tables, max_size=3), json_values),
    max_size=5,
)


@QUICK
@given(document=documents)
def test_any_config_document_loads_or_says_what_is_wrong(document: dict[str, Any]) -> None:
    try:
        config = parse_config(document, environ={})
    except ConfigError as exc:
        assert str(exc)
        return
    assert isinstance(config, Config)


toml_texts = st.one_of(
    st.text(alphabet=string.printable, max_size=200),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    st.builds(lambda k, v: f"[{k}]\n{v}\n", st.sampled_from(SECTIONS), st.text(max_size=60)),
)


@QUICK
@given(content=st.one_of(toml_texts.map(str.encode), st.binary(max_size=200)))
def test_any_config_file_loads_or_says_what_is_wrong(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sendqueue.toml"
        path.write_bytes(content)
        try:
            load_config(path, environ={})
        except ConfigError as exc:
            assert str(exc)
