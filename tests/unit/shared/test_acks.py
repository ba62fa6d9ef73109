"""AckCoalescer: acks go out together where that is safe, and never cover a job in hand."""

from __future__ import annotations

import asyncio
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sendqueue.shared import acks as acks_module
from sendqueue.shared.acks import AckCoalescer
from tests.unit.fakes import FakeMessage, FakeTags, dead_channel

pytestmark = pytest.mark.timeout(20)


def _delivered(tags: FakeTags, coalescer: AckCoalescer, count: int) -> list[FakeMessage]:
    """`count` messages delivered on `tags` and seen by the consumer, in order."""
    messages = []
    for _ in range(count):
        message = FakeMessage(b"job")
        tags.deliver(message)
        coalescer.track(message)  # type: ignore[arg-type]
        messages.append(message)
    return messages


async def test_jobs_done_in_the_same_iteration_go_in_one_multiple_ack():
    # Given five jobs in hand
    tags = FakeTags()
    coalescer = AckCoalescer("pacs")
    messages = _delivered(tags, coalescer, 5)

    # When all five are done in the same loop iteration
    await asyncio.gather(*(coalescer.ack(m) for m in messages))

    # Then one frame acks them all, and each job's ack returned only once it was written
    assert tags.frames == ["ack 5 multiple"]
    assert [m.outcomes for m in messages] == [["ack"]] * 5 and not tags.unsettled


async def test_jobs_done_one_at_a_time_are_acked_one_at_a_time_without_waiting():
    # Given two jobs in hand
    tags = FakeTags()
    coalescer = AckCoalescer("pacs")
    first, second = _delivered(tags, coalescer, 2)

    # When the first is done, then the second
    await coalescer.ack(first)
    frames_after_first = list(tags.frames)
    await coalescer.ack(second)

    # Then each went out at the next iteration: no wait for a partner
    assert frames_after_first == ["ack 1"]
    assert tags.frames == ["ack 1", "ack 2"]


async def test_a_job_still_sending_is_never_covered_and_holds_no_other_ack():
    # Given four jobs in hand, of which the second is a long send
    tags = FakeTags()
    coalescer = AckCoalescer("pacs")
    first, sending, third, fourth = _delivered(tags, coalescer, 4)

    # When the others are done together
    await asyncio.gather(coalescer.ack(first), coalescer.ack(third), coalescer.ack(fourth))

    # Then the ones beyond the gap are acked one by one at once, the long send untouched
    assert tags.frames == ["ack 1", "ack 3", "ack 4"]
    assert sending.outcomes == [] and list(tags.unsettled) == [2]

    # And when it is done, it is acked alone
    await coalescer.ack(sending)
    assert tags.frames[-1] == "ack 2" and not tags.unsettled


async def test_the_done_prefix_below_a_running_job_goes_in_one_frame():
    # Given five jobs in hand, the fourth still sending
    tags = FakeTags()
    coalescer = AckCoalescer("pacs")
    messages = _delivered(tags, coalescer, 5)

    # When the others are done together
    await asyncio.gather(*(coalescer.ack(m) for i, m in enumerate(messages) if i != 3))

    # Then tags 1-3 go in one multiple ack, 5 alone, 4 stays in hand
    assert tags.frames == ["ack 3 multiple", "ack 5"]
    assert list(tags.unsettled) == [4]


async def test_a_nacked_job_leaves_the_tracking_at_once():
    # Given three jobs in hand
    tags = FakeTags()
    coalescer = AckCoalescer("pacs")
    first, second, third = _delivered(tags, coalescer, 3)

    # When the first goes back by a nack, then the others are done
    await coalescer.nack_requeue(first)
    await asyncio.gather(coalescer.ack(second), coalescer.ack(third))

    # Then the nack went alone and the rest in one multiple ack (1 is settled already)
    assert tags.frames == ["nack 1", "ack 3 multiple"]
    assert first.outcomes == ["nack requeue"] and third.outcomes == ["ack"]


async def test_a_nack_that_failed_stays_a_barrier(caplog):
    # Given three jobs in hand, and a nack of the first that does not leave
    tags = FakeTags()
    coalescer = AckCoalescer("pacs")
    first, second, third = _delivered(tags, coalescer, 3)
    first.settle_error = ConnectionResetError("gone")

    # When the first is nacked, then the others are done together
    with caplog.at_level(logging.WARNING):
        await coalescer.nack_requeue(first)
    await asyncio.gather(coalescer.ack(second), coalescer.ack(third))

    # Then they are acked one by one: a multiple ack would have acked (lost) the first
    assert tags.frames == ["ack 2", "ack 3"] and list(tags.unsettled) == [1]
    assert "nack failed" in caplog.text


async def test_a_job_left_unacked_at_shutdown_is_never_covered_and_the_rest_flushed():
    # Given three jobs in hand, the first cancelled by a shutdown (left for redelivery)
    tags = FakeTags()
    coalescer = AckCoalescer("pacs")
    cancelled, second, third = _delivered(tags, coalescer, 3)

    # When the other two are done and the consumer flushes at once (before the loop turns)
    waiting = [asyncio.create_task(coalescer.ack(m)) for m in (second, third)]
    await asyncio.sleep(0)  # the acks are decided; the flush has not run yet
    await coalescer.flush()

    # Then both acks were written, one by one, and the cancelled job stays unacked
    assert tags.frames == ["ack 2", "ack 3"] and list(tags.unsettled) == [1]
    assert cancelled.outcomes == []
    await asyncio.gather(*waiting)


async def test_flush_with_nothing_decided_writes_nothing():
    tags = FakeTags()
    coalescer = AckCoalescer("pacs")
    _delivered(tags, coalescer, 2)
    await coalescer.flush()
    assert tags.frames == []


async def test_acks_decided_when_the_channel_closed_are_dropped_with_a_warning(caplog):
    # Given two jobs done in hand, and the channel lost before the flush
    tags = FakeTags()
    coalescer = AckCoalescer("pacs")
    messages = _delivered(tags, coalescer, 2)
    waiting = asyncio.gather(*(coalescer.ack(m) for m in messages))
    await asyncio.sleep(0)
    tags.close()

    # When the flush runs
    with caplog.at_level(logging.WARNING, logger=acks_module.__name__):
        await waiting

    # Then nothing is written (the broker delivers both again) and it says so
    assert tags.frames == [] and all(m.outcomes == [] for m in messages)
    assert "2 ack(s) dropped" in caplog.text


async def test_a_reopened_channel_starts_a_new_tag_space(caplog):
    # Given two jobs in hand on a channel, the first done but not yet flushed
    old = FakeTags()
    coalescer = AckCoalescer("pacs")
    done, sending = _delivered(old, coalescer, 2)
    decided = asyncio.create_task(coalescer.ack(done))
    await asyncio.sleep(0)

    # When the channel is reopened (aio-pika's robust channel) and a job arrives on it
    old.close()
    new = FakeTags()
    with caplog.at_level(logging.WARNING):
        (fresh,) = _delivered(new, coalescer, 1)
        await decided

    # Then the old channel's pending ack was dropped, with a warning
    assert old.frames == [] and done.outcomes == []
    assert "reopened" in caplog.text and "1 ack(s) dropped" in caplog.text

    # And the old job done now (its tag 2 is not the new tag 2) fails alone, logged
    sending.settle_error = dead_channel()
    (other,) = _delivered(new, coalescer, 1)
    await coalescer.ack(sending)
    assert sending.outcomes == [] and other.outcomes == []

    # While the new channel's jobs are acked on it, from tag 1
    await asyncio.gather(coalescer.ack(fresh), coalescer.ack(other))
    assert new.frames == ["ack 2 multiple"]


async def test_a_delivery_the_consumer_never_saw_is_never_covered(caplog):
    # Given a delivery on the channel that never reached this consumer (tag 2)
    tags = FakeTags()
    coalescer = AckCoalescer("pacs")
    (first,) = _delivered(tags, coalescer, 1)
    unseen = FakeMessage(b"lost?")
    tags.deliver(unseen)
    with caplog.at_level(logging.WARNING):
        third, fourth = _delivered(tags, coalescer, 2)

    # When all the jobs it saw are done together
    await asyncio.gather(*(coalescer.ack(m) for m in (first, third, fourth)))

    # Then the acks above the gap go one by one: the unseen delivery stays unacked
    assert tags.frames == ["ack 1", "ack 3", "ack 4"] and list(tags.unsettled) == [2]
    assert "follows 1" in caplog.text


async def test_acks_decided_while_a_flush_writes_never_overtake_its_frames():
    # Given four jobs in hand, frames that take a few iterations to be written, and the
    # second and third done while the first still sends: a flush writes 2, then 3, alone
    tags = FakeTags()
    tags.drain = 3
    coalescer = AckCoalescer("pacs")
    first, second, third, fourth = _delivered(tags, coalescer, 4)
    early = [asyncio.create_task(coalescer.ack(m)) for m in (second, third)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)

    # When the first and the fourth are done while that flush is writing
    await asyncio.gather(*early, coalescer.ack(first), coalescer.ack(fourth))

    # Then the multiple ack of 4 waits for the ack of 3 (it would cover it: acking 3 after
    # that is a channel error)
    assert tags.frames == ["ack 2", "ack 3", "ack 4 multiple"] and not tags.is_closed


async def test_a_delay_gathers_acks_from_later_iterations():
    # Given a coalescer that waits 20 ms before a flush
    tags = FakeTags()
    coalescer = AckCoalescer("pacs", delay=0.02)
    first, second = _delivered(tags, coalescer, 2)

    # When the jobs are done a few iterations apart
    waiting = asyncio.create_task(coalescer.ack(first))
    await asyncio.sleep(0.001)
    await coalescer.ack(second)
    await waiting

    # Then they went together
    assert tags.frames == ["ack 2 multiple"]


# -- the safety rule over random completion orders --------------------------------------------


class _CheckedTags(FakeTags):
    """A channel that fails the test the moment an ack covers a job not decided for ack."""

    def __init__(self) -> None:
        super().__init__()
        self.decided: set[int] = set()
        #: Frames that covered a job not decided for ack (the coalescer logs what raises).
        self.violations: list[str] = []

    def settle(self, message: FakeMessage, frame: str, *, multiple: bool) -> list[FakeMessage]:
        settled = super().settle(message, frame, multiple=multiple)
        covered = {m.delivery_tag for m in settled}
        if frame == "ack" and not covered <= self.decided:
            self.violations.append(f"{self.frames[-1]} covers {covered - self.decided}")
            raise AssertionError(self.violations[-1])
        return settled


OUTCOMES = st.sampled_from(["ack", "ack", "ack", "nack", "left", "unseen"])


@st.composite
def _plans(draw: st.DrawFn) -> list[tuple[int, str, int]]:
    """(delivery index, its outcome, loop iterations before the next one), in the order
    the jobs end; a job ends only after its delivery (arrivals are interleaved)."""
    count = draw(st.integers(min_value=1, max_value=12))
    order = draw(st.permutations(range(count)))
    return [(index, draw(OUTCOMES), draw(st.integers(0, 3))) for index in order]


@settings(max_examples=300, deadline=None)
@given(plan=_plans(), drain=st.integers(0, 3))
def test_no_ack_ever_covers_a_job_not_done(plan, drain):
    # `drain`: loop iterations each ack frame takes to be written
    asyncio.run(_run_plan(plan, drain))


async def _run_plan(plan: list[tuple[int, str, int]], drain: int) -> None:
    tags = _CheckedTags()
    tags.drain = drain
    coalescer = AckCoalescer("pacs")
    outcome_of = {index: outcome for index, outcome, _ in plan}
    messages = [FakeMessage(b"job") for _ in plan]
    arrived = 0
    tasks = []
    for index, outcome, pause in plan:
        while arrived <= index:  # the broker delivers in order, up to this job at least
            tags.deliver(messages[arrived])
            if outcome_of[arrived] != "unseen":
                coalescer.track(messages[arrived])  # type: ignore[arg-type]
            arrived += 1
        message = messages[index]
        if outcome == "ack":
            tags.decided.add(index + 1)
            tasks.append(asyncio.create_task(coalescer.ack(message)))  # type: ignore[arg-type]
        elif outcome == "nack":
            tasks.append(asyncio.create_task(coalescer.nack_requeue(message)))  # type: ignore[arg-type]
        for _ in range(pause):
            await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    await coalescer.flush()
    assert tags.violations == [] and not tags.is_closed
    for index, message in enumerate(messages):
        expected = {"ack": ["ack"], "nack": ["nack requeue"]}.get(outcome_of[index], [])
        assert message.outcomes == expected, (index + 1, tags.frames)
