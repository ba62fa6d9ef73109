"""The sender's acks, one frame per job or coalesced: CPU per job on a real channel.

    .venv/bin/python bench/acks.py                     # 5000 jobs, prefetch 8, 3 runs a mode
    .venv/bin/python bench/acks.py --jobs 2000 --runs 1 --modes single,coalesced

A throw-away vhost on the RabbitMQ of the tests (127.0.0.1:5672), deleted at the end. For
each run, N small jobs are queued, then consumed with a prefetch of 8; the process's CPU
time (time.process_time) and wall time are taken from the first delivery to the last ack.
Levels:

- `raw`: a handler that takes 0-2 loop iterations (jobs end out of order), then acks.
- `consumer`: sendqueue's DestinationConsumer (concurrency 4, prefetch 8) with an
  in-memory destination and Orthanc: the whole per-job cost, acks included.

Modes: `single` (one basic.ack per job, as before), `coalesced` (shared/acks.py, next loop
iteration), `coalesced-1ms` / `coalesced-5ms` (a flush waits that long for more acks).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aio_pika
import aiormq

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import broker_cpu_s  # noqa: E402
from sendqueue.shared.acks import AckCoalescer  # noqa: E402
from sendqueue.shared.schemas import SendJob, encode  # noqa: E402
from sendqueue.shared.settle import ack_alone, nack_requeue  # noqa: E402
from sendqueue.shared.topology import Names  # noqa: E402
from tests.support import rabbit  # noqa: E402
from tests.unit.fakes import FakeDestination, FakeOrthanc, consumer_with_fakes  # noqa: E402

DELAYS = {"single": None, "coalesced": 0.0, "coalesced-1ms": 0.001, "coalesced-5ms": 0.005}
NAMES = Names("bench")
PREFETCH = 8

#: basic.ack frames sent by this process (aiormq's Channel.basic_ack, counted).
frames = 0
_basic_ack = aiormq.Channel.basic_ack


async def _counting_basic_ack(self: Any, *args: Any, **kwargs: Any) -> None:
    global frames
    frames += 1
    await _basic_ack(self, *args, **kwargs)


aiormq.Channel.basic_ack = _counting_basic_ack  # type: ignore[method-assign]


class SingleAcks:
    """What the consumer did before: one basic.ack per job."""

    def track(self, message: Any) -> None:
        return None

    async def ack(self, message: Any) -> None:
        await ack_alone(message)

    async def nack_requeue(self, message: Any) -> None:
        await nack_requeue(message)

    async def flush(self) -> None:
        return None


def _acks(mode: str) -> Any:
    delay = DELAYS[mode]
    return SingleAcks() if delay is None else AckCoalescer("bench", delay=delay)


async def _fill(connection: aio_pika.abc.AbstractConnection, queue: str, jobs: int) -> None:
    async with connection.channel() as channel:
        for start in range(0, jobs, 500):
            await asyncio.gather(
                *(
                    channel.default_exchange.publish(_message(n), routing_key=queue)
                    for n in range(start, min(jobs, start + 500))
                )
            )


def _message(n: int) -> aio_pika.Message:
    job = SendJob(id=f"job-{n}", destination="pacs", orthanc_id="o1")
    return aio_pika.Message(encode(job))


Timing = tuple[float, float, float]  # (CPU of this process, of the broker, wall) seconds


async def _raw_run(connection: Any, mode: str, jobs: int) -> Timing:
    queue_name = "bench.raw"
    async with connection.channel() as setup:
        await setup.declare_queue(queue_name, durable=True)
    await _fill(connection, queue_name, jobs)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=PREFETCH)
    queue = await channel.declare_queue(queue_name, durable=True)
    acks = _acks(mode)
    done = asyncio.Event()
    count = 0
    pause = random.Random(1)

    async def handle(message: Any) -> None:
        nonlocal count
        acks.track(message)
        for _ in range(pause.randrange(3)):  # jobs end out of order, as sends do
            await asyncio.sleep(0)
        await acks.ack(message)
        count += 1
        if count == jobs:
            done.set()

    return await _timed(lambda: queue.consume(handle), done, channel, acks)


async def _consumer_run(connection: Any, mode: str, jobs: int) -> Timing:
    orthanc = FakeOrthanc()
    orthanc.store("o1", data=b"DICM" + b"\0" * 1024)
    destination = FakeDestination("pacs", concurrency=PREFETCH // 2)
    with tempfile.TemporaryDirectory() as spool:
        consumer = consumer_with_fakes(destination, orthanc, Path(spool), names=NAMES)
        consumer._acks = _acks(mode)
        channel = await connection.channel()
        await consumer.start(channel, paused=True)
        await _fill(connection, NAMES.work_queue("pacs"), jobs)
        done = asyncio.Event()

        async def watch() -> None:
            while len(destination.received) < jobs:
                await asyncio.sleep(0.01)
            await consumer.stop(grace=5)
            done.set()

        watcher = asyncio.create_task(watch())
        result = await _timed(lambda: consumer.set_paused(False), done, channel, consumer._acks)
        await watcher
        return result


async def _timed(
    start: Callable[[], Awaitable[Any]], done: asyncio.Event, channel: Any, acks: Any
) -> Timing:
    global frames
    frames = 0
    cpu, broker, wall = time.process_time(), broker_cpu_s(), time.monotonic()
    await start()
    await done.wait()
    await acks.flush()
    cpu, broker = time.process_time() - cpu, broker_cpu_s() - broker
    wall = time.monotonic() - wall
    await channel.close()
    return cpu, broker, wall


async def _left_in(connection: Any, queue: str) -> int:
    async with connection.channel() as channel:
        declared = await channel.declare_queue(queue, passive=True)
        count = declared.declaration_result.message_count
        await declared.purge()
        return int(count or 0)


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--levels", default="raw,consumer")
    parser.add_argument("--modes", default=",".join(DELAYS))
    args = parser.parse_args(argv)
    with rabbit.temp_vhost() as vhost:
        connection = await aio_pika.connect_robust(vhost.amqp_url)
        try:
            for level in args.levels.split(","):
                await _level(connection, level, args.modes.split(","), args.jobs, args.runs)
        finally:
            await connection.close()


async def _level(connection: Any, level: str, modes: list[str], jobs: int, runs: int) -> None:
    run = _raw_run if level == "raw" else _consumer_run
    queue = "bench.raw" if level == "raw" else NAMES.work_queue("pacs")
    results: dict[str, list[tuple[float, float, float, int]]] = {mode: [] for mode in modes}
    for _ in range(runs):
        for mode in modes:  # interleaved, so a drift of the machine hits every mode alike
            cpu, broker, wall = await run(connection, mode, jobs)
            left = await _left_in(connection, queue)
            assert left == 0, f"{level} {mode}: {left} jobs left unacked"
            results[mode].append((cpu, broker, wall, frames))
    for mode, rows in results.items():
        cpu_us, broker_us = (statistics.median(r[i] for r in rows) / jobs * 1e6 for i in (0, 1))
        rate = jobs / statistics.median(r[2] for r in rows)
        per_frame = jobs / statistics.median(r[3] for r in rows)
        print(
            f"{level:8} {mode:14} CPU {cpu_us:6.1f} µs/job, broker {broker_us:6.1f} µs/job, "
            f"{rate:6.0f} jobs/s, {per_frame:4.2f} jobs per basic.ack (runs: "
            + ", ".join(f"{r[0] / jobs * 1e6:.0f}/{r[1] / jobs * 1e6:.0f}" for r in rows)
            + " µs/job)",
            flush=True,
        )


if __name__ == "__main__":
    asyncio.run(main())
