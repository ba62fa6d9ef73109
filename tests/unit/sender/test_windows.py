"""Send windows hold a destination's consumer like a pause, on an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sendqueue.services.sender.windows import WindowKeeper
from sendqueue.shared.schemas import ControlState
from sendqueue.shared.send_window import SendWindow
from tests.unit.sender.test_consumer import _start

MONDAY_NOON = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def test_outside_its_window_a_destination_waits_and_inside_it_consumes(
    tmp_path, no_publish_pause
):
    clock = Clock(MONDAY_NOON)
    keeper = WindowKeeper({"pacs": SendWindow.parse("Mon-Fri 19:00-07:00", "UTC")}, clock)
    sender = await _start(tmp_path)
    try:
        # When the keeper takes a consumer at noon, outside its window
        await keeper.add(sender.consumer)
        # Then it consumes nothing, says "waiting-for-window", and the metric says so
        assert sender.queue.consumer is None
        assert sender.consumer.state == "waiting-for-window"
        assert sender.metric("sendqueue_destination_state", state="waiting-for-window") == 1
        # and the keeper sleeps until the window opens (at most a minute at a time)
        assert keeper._sleep() == 60.0
        clock.now = MONDAY_NOON + timedelta(hours=6, minutes=59, seconds=30)
        assert keeper._sleep() == 30.0

        # When the window opens, it consumes again
        clock.now = MONDAY_NOON + timedelta(hours=7)
        await keeper.apply()
        assert sender.queue.consumer is not None and sender.consumer.state == "up"

        # And when it closes the next morning, it waits again
        clock.now = MONDAY_NOON + timedelta(hours=19)
        await keeper.apply()
        assert sender.queue.consumer is None
        assert sender.states == ["waiting-for-window", "up", "waiting-for-window"]
    finally:
        await sender.consumer.stop(grace=0)


async def test_an_operator_resume_opens_it_until_the_window_opens_and_a_pause_wins(
    tmp_path, no_publish_pause
):
    clock = Clock(MONDAY_NOON)
    keeper = WindowKeeper({"pacs": SendWindow.parse("19:00-07:00", "UTC")}, clock)
    sender = await _start(tmp_path)
    try:
        await keeper.add(sender.consumer)
        opens = (MONDAY_NOON + timedelta(hours=7)).timestamp()
        # When an operator resumes it outside the window
        keeper.follow(ControlState(window_open_until={"pacs": opens}))
        await keeper.apply()
        # Then it consumes at once
        assert sender.queue.consumer is not None and sender.consumer.state == "up"
        # And an operator pause still holds it, with the window open or not
        await sender.consumer.set_paused(True)
        clock.now = MONDAY_NOON + timedelta(hours=8)
        await keeper.apply()
        assert sender.queue.consumer is None and sender.consumer.state == "paused"
        await sender.consumer.set_paused(False)
        assert sender.queue.consumer is not None
        # After the override ran out and the window closed again, it waits
        clock.now = MONDAY_NOON + timedelta(hours=20)
        await keeper.apply()
        assert sender.consumer.state == "waiting-for-window"
    finally:
        await sender.consumer.stop(grace=0)


async def test_a_destination_without_a_window_is_left_alone(tmp_path, no_publish_pause):
    keeper = WindowKeeper({}, Clock(MONDAY_NOON))
    sender = await _start(tmp_path)
    try:
        await keeper.add(sender.consumer)
        await keeper.apply()
        assert sender.queue.consumer is not None and not keeper.closed_now("pacs")
    finally:
        await sender.consumer.stop(grace=0)
