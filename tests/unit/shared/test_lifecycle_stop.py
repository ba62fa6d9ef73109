"""A service's background task stops with the service even if it drops a cancellation."""

from __future__ import annotations

import asyncio
import time

from sendqueue.shared.lifecycle import ServiceParts


async def test_a_task_that_swallows_one_cancellation_is_cancelled_again() -> None:
    # Given a task that, like a library racing a result against the cancellation (Python
    # 3.11's wait_for), loses the first cancellation and goes on looping
    cancellations = 0

    async def stubborn() -> None:
        nonlocal cancellations
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancellations += 1
                if cancellations > 1:
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]

    # When the service's parts close
    started = time.monotonic()
    async with asyncio.timeout(10):  # a closing that would wait forever fails in 10 s
        async with ServiceParts() as parts:
            task = parts.task(stubborn(), "stubborn")
            await asyncio.sleep(0)
    # Then the task is done, after a second cancellation, within a few seconds
    assert task.done() and cancellations == 2
    assert time.monotonic() - started < 5
