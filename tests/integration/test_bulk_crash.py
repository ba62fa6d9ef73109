"""kill -9 of the retry service in the middle of a bulk requeue loses and duplicates nothing."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp

from tests.integration.harness import PREFIX, dicom_destination, queue_ready, wait_for
from tests.integration.parked_factory import drain_job_ids, fill_parked, parked_job

ITEMS = 4000


async def _operation(pipeline) -> dict:
    with contextlib.suppress(aiohttp.ClientError):
        return (await pipeline.admin("GET", "/api/operations/current"))[1]
    return {"running": False, "done": 0}


async def test_kill_9_mid_bulk_requeue_leaves_every_item_parked_or_requeued(make_pipeline, scp):
    # Given many parked jobs and a retry service running as its own process
    pipeline = make_pipeline(destinations=[dicom_destination("pacs", scp.port, scp.aet)])
    jobs = [parked_job(i, "pacs") for i in range(ITEMS)]
    pipeline.spawn("retry")
    await pipeline.wait_healthy("retry")
    await fill_parked(pipeline.config.amqp.url, PREFIX, jobs)
    await pipeline.wait_parked(ITEMS, timeout=90)

    # When a bulk requeue is under way and the service is killed
    async def requeue() -> None:
        with contextlib.suppress(aiohttp.ClientError):
            await pipeline.admin("POST", "/api/parked/requeue", {"destination": "pacs"})

    call = asyncio.create_task(requeue())
    await wait_for(
        lambda: _operation(pipeline),
        lambda op: op["running"] and 0 < op["done"] < ITEMS / 2,
        30,
        interval=0.02,
    )
    pipeline.kill("retry")
    await call

    # Then after a restart every item is parked or requeued: none lost
    pipeline.spawn("retry")
    await pipeline.wait_healthy("retry")

    # ...and, once any interrupted requeue is finished, the index agrees with the queue
    async def index_and_queue() -> tuple[dict, int]:
        return await pipeline.parked(), await queue_ready(pipeline, "parked")

    _, in_queue = await wait_for(
        index_and_queue,
        lambda got: not got[0]["rebuilding"] and got[0]["total"] == got[1],
        45,
    )
    assert pipeline.terminate("retry") == 0
    parked = await drain_job_ids(pipeline.config.amqp.url, f"{PREFIX}.parked")
    requeued = await drain_job_ids(pipeline.config.amqp.url, f"{PREFIX}.work.pacs")
    assert set(parked) | set(requeued) == {job.id for job in jobs}
    # ...and none twice: a requeue the killed service had confirmed but not acked is
    # finished (its parked copy dropped) instead of being sent again
    twice = set(parked) & set(requeued)
    assert not twice, f"{len(twice)} of {ITEMS} items both parked and requeued"
    assert len(requeued) == len(set(requeued))
    assert 0 < len(set(requeued)) < ITEMS and len(set(parked)) < ITEMS
    assert len(parked) == in_queue
