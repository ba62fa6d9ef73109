"""`[sender] processes`: one command, several sender processes on the same queues, their
metrics and health served as one, a dead one started again, none outliving the command."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import aio_pika
import pytest

from tests.integration.harness import Pipeline, dicom_destination, wait_for, wait_received
from tests.support.dicom_factory import make_study, sop_instance_uid

CHILD = "sendqueue.services.sender.processes"


def children_of(pid: int) -> list[int]:
    """PIDs of the sender processes `pid` started (by their command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        parent = int(stat.rpartition(")")[2].split()[1])
        if parent == pid and CHILD in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def wait_gone(pids: list[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids):
        assert time.monotonic() < deadline, f"still running: {[p for p in pids if alive(p)]}"
        await asyncio.sleep(0.1)


async def consumers(pipeline: Pipeline, destination: str) -> int:
    connection = await aio_pika.connect(pipeline.config.amqp.url)
    async with connection, connection.channel() as channel:
        queue = await channel.declare_queue(
            f"{pipeline.config.amqp.prefix}.work.{destination}", passive=True
        )
        return int(queue.declaration_result.consumer_count or 0)


@pytest.fixture
def two_processes(make_pipeline, scp):
    return make_pipeline(
        destinations=[dicom_destination("pacs", scp.port, scp.aet, concurrency=2)],
        sender={"processes": 2},
    )


async def test_two_processes_share_the_queue_and_report_as_one(two_processes, orthanc, scp):
    pipeline = two_processes
    # Given `sendqueue sender` with processes = 2
    proc = pipeline.spawn("sender")
    await pipeline.start("ingest", "retry")
    await pipeline.wait_healthy("sender", timeout=60)
    assert len(children_of(proc.pid)) == 2
    assert await wait_for(lambda: consumers(pipeline, "pacs"), lambda n: n == 2, timeout=20)
    # When instances are stored
    study = make_study(12)
    for data in study:
        orthanc.upload(data)
    # Then each arrives, and the supervisor's metrics count each once, by process
    assert await wait_received(scp, 12, timeout=60) == {sop_instance_uid(d) for d in study}

    async def sent() -> float:
        return await pipeline.metric_sum("sender", "sendqueue_jobs_sent_total", destination="pacs")

    assert await wait_for(sent, lambda n: n == 12, timeout=20) == 12
    samples = await pipeline.metrics("sender")
    processes = {
        dict(labels).get("process")
        for (name, labels) in samples
        if name == "sendqueue_destination_up"
    }
    assert processes == {"1", "2"}
    assert samples[("sendqueue_sender_processes", ())] == 2


async def test_a_dead_process_is_started_again_and_nothing_is_lost(two_processes, orthanc, scp):
    pipeline = two_processes
    proc = pipeline.spawn("sender")
    await pipeline.start("ingest", "retry")
    await pipeline.wait_healthy("sender", timeout=60)
    first, second = children_of(proc.pid)
    # When one sender process dies mid-stream
    study = make_study(20)
    for data in study[:10]:
        orthanc.upload(data)
    os.kill(first, signal.SIGKILL)
    for data in study[10:]:
        orthanc.upload(data)
    # Then every instance still arrives, and the dead process is replaced
    assert await wait_received(scp, 20, timeout=90) >= {sop_instance_uid(d) for d in study}

    async def restarts() -> float:
        return await pipeline.metric_sum("sender", "sendqueue_sender_process_restarts_total")

    assert await wait_for(restarts, lambda n: n >= 1, timeout=30) == 1
    await pipeline.wait_healthy("sender", timeout=60)
    now = children_of(proc.pid)
    assert len(now) == 2 and second in now and first not in now


async def running_senders(pipeline: Pipeline) -> list[int]:
    """`sendqueue sender` spawned and healthy: the PIDs of its two sender processes."""
    proc = pipeline.spawn("sender")
    await pipeline.wait_healthy("sender", timeout=60)
    pids = children_of(proc.pid)
    assert len(pids) == 2
    return pids


async def test_stopping_the_command_stops_every_process(two_processes):
    pids = await running_senders(two_processes)
    assert two_processes.terminate("sender") == 0
    await wait_gone(pids)


async def test_a_killed_supervisor_leaves_no_sender_behind(two_processes):
    pids = await running_senders(two_processes)
    two_processes.kill("sender")
    await wait_gone(pids)
