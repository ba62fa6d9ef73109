"""The faults, one scenario each: what it does, and how many duplicates it may cause.

Every scenario runs the same workload through ingest -> sender -> retry; only the fault
differs. A fault runs for the scenario's `window` (scaled up by bench/faults.py for large
workloads) and always restores what it broke in a `finally`.

Duplicate bounds. Delivery is at-least-once: a crash between a send and its ack sends
again. What must never happen is a blanket resend after a restart, so each scenario's bound
is the window of work that can be in doubt at the moment of the fault, times the number
of faults, plus SLACK for a background race of pynetdicom 3.0.4 (a C-STORE response taken
and dropped by its reactor: the instance was stored, the attempt is retried).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sendqueue.services.sender.consumer import PREFETCH_PER_SEND
from tests.faults import broker_faults
from tests.faults.spool_disk import filled
from tests.faults.stage import Stage

#: Settings every scenario's pipeline uses (bounds below are written in their terms).
CONCURRENCY = 2  # associations to the peer
PREFETCH = CONCURRENCY * PREFETCH_PER_SEND  # jobs a sender holds unacked
BATCH_SIZE = 20  # /changes per ingest page: what a restarted ingest may publish again
RETRY_PREFETCH = 32  # failure reports the retry service holds unacked (retry/app.py)
DIMSE_TIMEOUT = "10s"

Fault = Callable[[Stage], Awaitable[None]]


def slack(instances: int) -> int:
    """The pynetdicom 3.0.4 lost-response race: ~1 in 10 000 sends on a loaded 2-core
    machine (measured-here.md, item 7); every occurrence is one duplicate."""
    return 2 + instances // 2000


@dataclass(frozen=True)
class Scenario:
    name: str
    fault: Fault
    #: Seconds the fault lasts in CI (the workload arrives across it).
    window: float
    #: Duplicates the fault may cause, from the counts of what it did (`Stage.faults`).
    per_fault: Callable[[dict[str, int]], int]
    #: Why that bound holds (docs/reliability.md repeats it).
    why: str
    disturbs_broker: bool = False
    via_proxy: bool = False
    spool_tmpfs: bool = False
    #: Workload.large_every for this scenario.
    large_every: int = 0
    #: The fault is none of the jobs' (a local or source fault): it may cost no attempt.
    burns_no_attempts: bool = False
    #: Seconds allowed after the fault for everything to settle (None: the default).
    settle: float | None = None
    destination: dict[str, Any] = field(default_factory=dict)

    def duplicate_bound(self, faults: dict[str, int], instances: int) -> int:
        return self.per_fault(faults) + slack(instances)


async def no_fault(stage: Stage) -> None:
    await asyncio.sleep(stage.window)


def kill_repeatedly(service: str) -> Fault:
    async def fault(stage: Stage) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + stage.window
        while loop.time() < end:
            await asyncio.sleep(stage.rng.uniform(1.0, 3.5))
            await stage.kill_and_restart(service, down=stage.rng.uniform(0.0, 1.0))

    return fault


async def broker_restart(stage: Stage) -> None:
    await asyncio.sleep(stage.window * 0.25)
    async with broker_faults.broker_stopped():
        stage.faults["rabbitmq stop_app"] += 1
        stage.note("rabbitmqctl stop_app")
        await asyncio.sleep(8)
    stage.note("rabbitmqctl start_app: ready")
    await asyncio.sleep(max(0.0, stage.window * 0.75 - 8))


def alarm(kind: str, restart: tuple[str, ...] = ()) -> Fault:
    """The alarm for the window; `restart`: services killed and started again while it is
    on, as an operator or a supervisor would."""
    raise_alarm = broker_faults.memory_alarm if kind == "memory" else broker_faults.disk_alarm

    async def fault(stage: Stage) -> None:
        await asyncio.sleep(3)
        async with raise_alarm():
            stage.faults[f"{kind} alarm"] += 1
            stage.note(f"{kind} alarm raised")
            if restart:
                # Early, so that more of the alarm is left than the services' publish
                # timeout (30 s): a service that cannot start under an alarm shows it.
                await asyncio.sleep(2)
                for service in restart:
                    await stage.kill_and_restart(service, down=0.5)
            await asyncio.sleep(stage.window - 6 - (3 if restart else 0))
        stage.note(f"{kind} alarm cleared")
        await asyncio.sleep(3)

    return fault


async def orthanc_restarts(stage: Stage) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + stage.window
    crash = False
    while loop.time() < end:
        await asyncio.sleep(stage.rng.uniform(2.0, 5.0))
        # Alternately a clean stop (SIGTERM) and a crash (SIGKILL).
        await asyncio.to_thread(stage.orthanc.kill if crash else stage.orthanc.stop)
        stage.faults["orthanc restart"] += 1
        stage.note("orthanc " + ("killed" if crash else "stopped"))
        try:
            await asyncio.sleep(stage.rng.uniform(0.5, 2.0))
        finally:
            await asyncio.to_thread(stage.orthanc.start)
        crash = not crash


async def proxy_resets(stage: Stage) -> None:
    assert stage.proxy is not None
    loop = asyncio.get_running_loop()
    end = loop.time() + stage.window
    try:
        while loop.time() < end:
            await asyncio.sleep(stage.rng.uniform(0.3, 1.5))
            # Anywhere in the next 40 KB towards the peer: mid-PDU (16 KB) nearly always.
            stage.proxy.reset_one(after=stage.rng.randint(1, 40_000))
    finally:
        stage.faults["connection reset"] = stage.proxy.resets


async def proxy_trickle(stage: Stage) -> None:
    assert stage.proxy is not None
    await asyncio.sleep(2)
    stage.proxy.throttle(16_000)  # bytes/s each way, each connection: a 32 KB instance in 2 s
    stage.faults["throttled s"] = int(stage.window - 4)
    stage.note("proxy throttled to 16 KB/s")
    try:
        await asyncio.sleep(stage.window - 4)
    finally:
        stage.proxy.throttle(None)
        stage.note("proxy at full speed")
    await asyncio.sleep(2)


async def proxy_stalls(stage: Stage) -> None:
    assert stage.proxy is not None
    loop = asyncio.get_running_loop()
    end = loop.time() + stage.window
    try:
        while loop.time() < end and stage.proxy.stalls < 3:
            await asyncio.sleep(stage.rng.uniform(1.0, 4.0))
            # In the middle of a large instance: what is left exceeds the socket buffers,
            # so the sender's writes block (a small one would fit in them).
            stage.proxy.stall_one_beyond(1_000_000)
    finally:
        stage.proxy.stall_one_beyond(None)
        stage.faults["stalled connection"] = stage.proxy.stalls


async def destination_flapping(stage: Stage) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + stage.window
    try:
        while loop.time() < end:
            await asyncio.sleep(stage.rng.uniform(2.0, 5.0))
            await asyncio.to_thread(stage.scp.stop)
            stage.faults["destination down"] += 1
            stage.note("destination down")
            await asyncio.sleep(stage.rng.uniform(1.0, 3.0))
            await asyncio.to_thread(stage.scp.start)
            stage.note("destination up")
    finally:
        await asyncio.to_thread(stage.scp.start)


async def spool_full(stage: Stage) -> None:
    await asyncio.sleep(3)
    with filled(stage.spool) as size:
        stage.faults["spool full"] += 1
        stage.note(f"spool full ({size} bytes of filler)")
        await asyncio.sleep(stage.window - 6)
    stage.note("spool freed")
    await asyncio.sleep(3)


def _count(faults: dict[str, int], key: str) -> int:
    return int(faults.get(key, 0))


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "no-fault",
            no_fault,
            window=6,
            per_fault=lambda f: 0,
            why="nothing fails, so nothing is sent twice",
        ),
        Scenario(
            "kill-ingest",
            kill_repeatedly("ingest"),
            window=16,
            per_fault=lambda f: _count(f, "kill -9 ingest") * BATCH_SIZE,
            why=(
                "ingest saves its cursor after each page is confirmed: a restart publishes"
                f" again at most the page it was on ({BATCH_SIZE} changes)"
            ),
        ),
        Scenario(
            "kill-sender",
            kill_repeatedly("sender"),
            window=16,
            per_fault=lambda f: _count(f, "kill -9 sender") * PREFETCH,
            why=(
                "only unacked jobs come back, and the sender holds at most its prefetch"
                f" ({PREFETCH}) of them; each may have been stored already"
            ),
        ),
        Scenario(
            "kill-retry",
            kill_repeatedly("retry"),
            window=16,
            per_fault=lambda f: _count(f, "kill -9 retry") * RETRY_PREFETCH,
            why=(
                "the retry service holds at most its prefetch of failure reports"
                f" ({RETRY_PREFETCH}); each may have been re-queued or parked already"
            ),
        ),
        Scenario(
            "rabbitmq-restart",
            broker_restart,
            window=20,
            disturbs_broker=True,
            per_fault=lambda f: (
                _count(f, "rabbitmq stop_app") * (BATCH_SIZE + PREFETCH + RETRY_PREFETCH)
            ),
            why=(
                "every connection drops: unacked jobs and failure reports come back, and"
                " ingest publishes its unconfirmed page again"
            ),
        ),
        Scenario(
            "memory-alarm",
            alarm("memory"),
            window=26,
            disturbs_broker=True,
            per_fault=lambda f: (
                _count(f, "memory alarm") * (BATCH_SIZE + PREFETCH + RETRY_PREFETCH)
            ),
            why=(
                "publishers block: a publish that times out is published again once, by"
                " the same rule as a broker restart"
            ),
        ),
        Scenario(
            "disk-alarm",
            alarm("disk", restart=("retry", "sender")),
            # The alarm lasts 42 s, 39 s of them after the restarts.
            window=48,
            disturbs_broker=True,
            per_fault=lambda f: (
                _count(f, "disk alarm") * (BATCH_SIZE + PREFETCH + RETRY_PREFETCH)
                + _count(f, "kill -9 sender") * PREFETCH
                + _count(f, "kill -9 retry") * RETRY_PREFETCH
            ),
            why=(
                "as the memory alarm, plus the restarts' own bounds (as kill-sender and kill-retry)"
            ),
        ),
        Scenario(
            "orthanc-restart",
            orthanc_restarts,
            window=16,
            burns_no_attempts=True,
            per_fault=lambda f: 0,
            why=(
                "a job whose file cannot be read goes back untouched before any send, and"
                " ingest's cursor does not move while Orthanc is away"
            ),
        ),
        Scenario(
            "proxy-reset",
            proxy_resets,
            window=16,
            via_proxy=True,
            per_fault=lambda f: _count(f, "connection reset"),
            why=(
                "a reset after the peer has the whole instance, before its answer arrives,"
                " makes one more send: at most one per reset"
            ),
        ),
        Scenario(
            "proxy-trickle",
            proxy_trickle,
            window=16,
            via_proxy=True,
            per_fault=lambda f: 0,
            why="slow is not failed: every send completes once, within the DIMSE timeout",
        ),
        Scenario(
            "proxy-stall",
            proxy_stalls,
            window=15,
            via_proxy=True,
            large_every=25,
            # Each stall costs one DIMSE timeout before the association is aborted.
            settle=60,
            per_fault=lambda f: _count(f, "stalled connection"),
            why="a stalled association is aborted and its send tried again: one per stall",
        ),
        Scenario(
            "destination-flapping",
            destination_flapping,
            window=45,
            per_fault=lambda f: _count(f, "destination down") * CONCURRENCY,
            why=(
                f"each time it goes down at most the {CONCURRENCY} sends in flight are cut,"
                " each maybe after the peer stored the instance"
            ),
        ),
        Scenario(
            "spool-full",
            spool_full,
            window=20,
            burns_no_attempts=True,
            spool_tmpfs=True,
            per_fault=lambda f: 0,
            why="the download fails before any send",
        ),
    )
}
