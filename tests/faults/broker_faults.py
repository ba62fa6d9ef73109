"""Faults of the machine's RabbitMQ: stopped and started, memory alarm, disk alarm.

Each disturbs every vhost of the broker, so callers hold the exclusive broker lock
(tests/support/broker_lock.py `disturbing_broker`) for as long as the fault can last, and
each context manager restores the broker in its `finally`: the application started and
answering again, the watermark or disk limit set back to the value read before.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from tests.support import rabbit
from tests.support.ports import port_open

#: rabbitmqctl starts an Erlang VM per call (~1 s); start_app takes several seconds.
_CTL_TIMEOUT = 120.0


async def rabbitmqctl(*args: str) -> str:
    result = await asyncio.to_thread(
        subprocess.run,
        ["rabbitmqctl", *args],
        capture_output=True,
        text=True,
        timeout=_CTL_TIMEOUT,
    )
    if result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


async def broker_status() -> dict[str, Any]:
    status: dict[str, Any] = json.loads(await rabbitmqctl("status", "--formatter", "json"))
    return status


async def wait_broker_ready(timeout: float = 120.0) -> None:
    """AMQP port open and the management API answering (so vhosts can be used)."""
    host, _, port = rabbit.AMQP_HOST.partition(":")
    deadline = time.monotonic() + timeout
    while not (
        await asyncio.to_thread(port_open, int(port or 5672), host)
        and await asyncio.to_thread(rabbit.management_available)
    ):
        if time.monotonic() > deadline:
            raise TimeoutError(f"RabbitMQ not ready {timeout}s after start_app")
        await asyncio.sleep(0.5)


async def wait_alarm(raised: bool, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while bool((await broker_status()).get("alarms")) != raised:
        if time.monotonic() > deadline:
            raise TimeoutError(f"broker alarm still {'off' if raised else 'on'} after {timeout}s")
        await asyncio.sleep(0.5)


@asynccontextmanager
async def broker_stopped() -> AsyncIterator[None]:
    """`rabbitmqctl stop_app` for the block; `start_app` (and ready again) in a finally."""
    try:
        await rabbitmqctl("stop_app")
        yield
    finally:
        await rabbitmqctl("start_app")
        await wait_broker_ready()


@asynccontextmanager
async def memory_alarm() -> AsyncIterator[None]:
    """The memory alarm raised (watermark 0: every publisher blocked); the watermark
    read before is set back in a finally."""
    setting = (await broker_status())["vm_memory_high_watermark_setting"]
    restore = (
        ["set_vm_memory_high_watermark", "absolute", str(setting["absolute"])]
        if "absolute" in setting
        else ["set_vm_memory_high_watermark", str(setting["relative"])]
    )
    try:
        await rabbitmqctl("set_vm_memory_high_watermark", "0")
        await wait_alarm(True)
        yield
    finally:
        await rabbitmqctl(*restore)
        await wait_alarm(False)


@asynccontextmanager
async def disk_alarm() -> AsyncIterator[None]:
    """The disk alarm raised (free-space limit above the free space); the limit read
    before (bytes, or mem_relative) is set back in a finally."""
    configured = (
        await rabbitmqctl("eval", "application:get_env(rabbit, disk_free_limit).")
    ).strip()
    restore = _disk_limit_args(configured)
    free = int((await broker_status())["disk_free"])
    try:
        await rabbitmqctl("set_disk_free_limit", str(free * 2 + 10**12))
        await wait_alarm(True)
        yield
    finally:
        await rabbitmqctl("set_disk_free_limit", *restore)
        await wait_alarm(False)


def _disk_limit_args(configured: str) -> list[str]:
    """rabbitmqctl's args that set the limit back from `{ok,50000000}`,
    `{ok,{mem_relative,1.0}}` or `{ok,"50MB"}`."""
    value = configured.removeprefix("{ok,").removesuffix("}")
    if value.startswith("{mem_relative,"):
        return ["mem_relative", value.removeprefix("{mem_relative,").removesuffix("}")]
    return [value.strip('"')]
