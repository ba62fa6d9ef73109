"""settle(): how every consumer acks, returns or sets aside a message, row by row."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from aiormq.exceptions import DeliveryError
from pamqp.commands import Basic

from sendqueue.shared import settle as settle_module
from sendqueue.shared.amqp import Publisher
from sendqueue.shared.errors import NotConfirmed
from sendqueue.shared.settle import settle
from tests.unit.fakes import FakeMessage, broker_nack, dead_channel

pytestmark = pytest.mark.timeout(10)


def _message(journal: list[str]) -> FakeMessage:
    return FakeMessage(b'{"type":"job"}', routing_key="pacs", journal=journal)


async def test_a_handler_that_returns_gets_its_message_acked():
    # Given a handler whose replacement message was confirmed
    journal = []
    message = _message(journal)

    async def handler() -> None:
        journal.append("handled")

    # When the message is settled
    await settle(message, handler, what="job")

    # Then it is acked, after the handler
    assert journal == ["handled", "ack"]


CAUSES = [
    DeliveryError(None, Basic.Nack(delivery_tag=1)),
    TimeoutError("no confirm within 30s"),
    ConnectionResetError("gone"),
]
CAUSE_IDS = ["broker-nack", "confirm-timeout", "connection-lost"]


class _RefusingExchange:
    def __init__(self, cause: BaseException) -> None:
        self.cause = cause

    async def publish(self, *_args: Any, **_kwargs: Any) -> None:
        raise self.cause


@pytest.mark.parametrize("cause", CAUSES, ids=CAUSE_IDS)
async def test_the_publisher_reports_every_unconfirmed_publish_as_not_confirmed(cause):
    # Given a publisher whose exchange fails the way aio-pika does
    publisher = Publisher(connection=None, timeout=1.0)
    publisher._exchanges["x"] = _RefusingExchange(cause)
    # When it publishes, Then the failure is NotConfirmed, with the cause kept
    with pytest.raises(NotConfirmed) as raised:
        await publisher.publish("x", "key", b"{}")
    assert raised.value.__cause__ is cause


@pytest.mark.parametrize("cause", CAUSES, ids=CAUSE_IDS)
async def test_a_publish_not_confirmed_goes_back_with_a_nack_and_is_not_set_aside(
    cause, no_publish_pause
):
    # Given a handler whose publish was not confirmed
    error = NotConfirmed(f"not confirmed: {cause!r}")
    crashes = []

    async def handler() -> None:
        raise error

    async def on_crash(exc: BaseException) -> None:
        crashes.append(exc)

    message = _message([])

    # When the message is settled
    await settle(message, handler, what="job", on_crash=on_crash)

    # Then it goes back to its queue, and nothing was published elsewhere for it
    assert message.outcomes == ["nack requeue"]
    assert crashes == []


async def test_a_message_not_confirmed_goes_back_only_after_the_pause(monkeypatch):
    # Given a pause before a message goes back (so a refusing broker is not hammered)
    monkeypatch.setattr(settle_module, "PUBLISH_RETRY_PAUSE", 0.2)
    handled = asyncio.Event()
    message = _message([])

    async def handler() -> None:
        handled.set()
        raise broker_nack()

    # When the message is settled
    started = time.monotonic()
    task = asyncio.create_task(settle(message, handler, what="job"))
    await handled.wait()
    await asyncio.sleep(0)

    # Then it is still unsettled during the pause, and nacked once the pause is over
    assert not message.settled
    await task
    assert message.outcomes == ["nack requeue"]
    assert time.monotonic() - started >= 0.2


async def test_an_unexpected_error_sets_the_message_aside_then_acks_it(no_publish_pause):
    # Given a handler that crashes outside any decision table
    journal = []
    crash = KeyError("ParentSeries")

    async def handler() -> None:
        raise crash

    async def on_crash(exc: BaseException) -> None:
        journal.append(f"set aside: {exc!r}")

    message = _message(journal)

    # When the message is settled
    await settle(message, handler, what="job", on_crash=on_crash)

    # Then the fallback got the error and published the message somewhere visible, then acked
    assert journal == [f"set aside: {crash!r}", "ack"]


async def test_a_failing_fallback_sends_the_message_back_instead_of_acking(no_publish_pause):
    # Given a handler that crashes and a fallback that cannot publish either
    async def handler() -> None:
        raise ValueError("unexpected")

    async def on_crash(exc: BaseException) -> None:
        raise broker_nack()

    message = _message([])

    # When the message is settled
    await settle(message, handler, what="job", on_crash=on_crash)

    # Then it goes back (the delivery limit bounds how often), never acked
    assert message.outcomes == ["nack requeue"]


async def test_without_a_fallback_an_unexpected_error_sends_the_message_back(no_publish_pause):
    # Given a handler that crashes and no fallback
    async def handler() -> None:
        raise ValueError("unexpected")

    message = _message([])

    # When the message is settled
    await settle(message, handler, what="job")

    # Then it goes back to its queue
    assert message.outcomes == ["nack requeue"]


async def test_a_cancelled_handler_propagates_and_leaves_the_message_unsettled():
    # Given a handler cancelled mid-way (shutdown)
    started = asyncio.Event()
    message = _message([])

    async def handler() -> None:
        started.set()
        await asyncio.Event().wait()

    # When its task is cancelled
    task = asyncio.create_task(settle(message, handler, what="job"))
    await started.wait()
    task.cancel()

    # Then the cancellation reaches the caller and the broker will redeliver the message
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not message.settled


async def test_an_ack_on_a_dead_channel_is_tolerated(caplog):
    # Given a message whose channel died while it was handled
    message = _message([])
    message.settle_error = dead_channel()

    async def handler() -> None:
        return None

    # When the message is settled
    with caplog.at_level(logging.WARNING, logger=settle_module.__name__):
        await settle(message, handler, what="job")

    # Then settle returns (the broker redelivers it) and says why
    assert not message.settled
    assert "ack failed" in caplog.text


async def test_a_nack_on_a_dead_channel_is_tolerated(caplog, no_publish_pause):
    # Given a message not confirmed elsewhere, whose channel died meanwhile
    message = _message([])
    message.settle_error = dead_channel()

    async def handler() -> None:
        raise broker_nack()

    # When the message is settled
    with caplog.at_level(logging.WARNING, logger=settle_module.__name__):
        await settle(message, handler, what="job")

    # Then settle returns and says why
    assert not message.settled
    assert "nack failed" in caplog.text


async def test_an_os_error_of_the_handler_is_set_aside_not_taken_for_the_broker(
    no_publish_pause,
):
    # Given a handler failing on a full disk (an OSError, as aio-pika's connection errors are)
    crashes: list[BaseException] = []

    async def handler() -> None:
        raise OSError(28, "No space left on device")

    async def on_crash(exc: BaseException) -> None:
        crashes.append(exc)

    journal: list[str] = []
    message = _message(journal)
    # When the message is settled
    await settle(message, handler, what="job", on_crash=on_crash)
    # Then it is set aside and acked, not nacked back in a loop
    assert [type(c) for c in crashes] == [OSError]
    assert journal == ["ack"]


class _SlowExchange:
    """Confirms after `delay` seconds, as a broker that stopped reading for a while."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.published = 0

    async def publish(self, *_args: Any, **_kwargs: Any) -> None:
        self.published += 1
        await asyncio.sleep(self.delay)


async def test_a_publish_confirmed_late_is_waited_for_not_given_up():
    # Given a publish that the broker confirms only after several confirm timeouts
    publisher = Publisher(connection=None, timeout=0.05)
    exchange = _SlowExchange(0.3)
    publisher._exchanges["x"] = exchange

    # When it publishes, Then it returns once confirmed (giving up would have the caller
    # put its message back while this copy still arrives: two lineages of one job)
    await publisher.publish("x", "key", b"{}")
    assert exchange.published == 1


async def test_a_publish_never_confirmed_is_given_up_after_the_patience():
    publisher = Publisher(connection=None, timeout=0.05, blocked_patience=0.2)
    publisher._exchanges["x"] = _SlowExchange(60)
    with pytest.raises(NotConfirmed):
        await publisher.publish("x", "key", b"{}")
