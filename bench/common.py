"""Helpers shared by the pipeline benchmarks: memory of a process, a bench vhost, uploads.

Nothing here starts a process or touches anything but what the caller passes in: the
benchmarks own their Orthanc, storescp, sendqueue processes and RabbitMQ vhost, and stop
them by PID / delete them at the end.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import statistics
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MB = 1024 * 1024


# -- memory of a process ---------------------------------------------------------------------


def status_mb(pid: int, field: str) -> float:
    """A memory line of /proc/<pid>/status (VmRSS, VmHWM...) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (/proc/<pid>/stat)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and of its live descendants (a supervisor's children)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree, grew = {pid}, True
    while grew:
        more = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    total = 0.0
    for member in tree:
        with contextlib.suppress(OSError):  # it ended meanwhile
            total += cpu_s(member)
    return total


def broker_cpu_s() -> float:
    """CPU seconds RabbitMQ's Erlang VM has used so far (0.0 if it is not found). The
    machine's broker is shared: other users' traffic counts in it too."""
    total = 0.0
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "beam.smp":
                total += cpu_s(int(comm.parent.name))
        except (OSError, ValueError):
            continue  # gone meanwhile
    return total


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, in clock ticks (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def cores_busy(before: tuple[int, int], after: tuple[int, int]) -> float:
    """How many cores were busy on average between two machine_jiffies(), by anyone."""
    import os

    busy, total = after[0] - before[0], after[1] - before[1]
    return busy / total * (os.cpu_count() or 1) if total else float("nan")


def reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux: clear_refs 5). False if refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class RssSampler:
    """Samples a process's VmRSS in a thread: the max, and the RSS at the end of each phase."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid = pid
        self.interval = interval
        self.max_mb = 0.0
        self.samples: list[tuple[float, float]] = []  # (monotonic, MiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = status_mb(self.pid, "VmRSS")
            except (OSError, RuntimeError):
                return  # the process is gone
            self.samples.append((time.monotonic(), rss))
            self.max_mb = max(self.max_mb, rss)
            self._stop.wait(self.interval)

    def max_between(self, start: float, end: float) -> float:
        inside = [mb for t, mb in self.samples if start <= t <= end]
        return max(inside) if inside else 0.0

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# -- RabbitMQ -----------------------------------------------------------------------------


@contextmanager
def bench_vhost() -> Iterator[Any]:
    """A fresh vhost named sq-bench-<hex> (not sq-test-: test leak checks ignore it), deleted
    at the end. Held with the tests' shared lock on the machine's broker, so a test that
    stops the broker waits for the measure to end (and the measure for it)."""
    from tests.support import rabbit
    from tests.support.broker_lock import using_broker

    with using_broker():
        vhost = rabbit.create_vhost(f"sq-bench-{uuid.uuid4().hex[:8]}")
        try:
            yield vhost
        finally:
            rabbit.delete_vhost(vhost.name)


async def declare_topology_for(config: Any) -> None:
    """Declare the exchanges and queues of a config, as the services do at start-up."""
    from sendqueue.shared.amqp import connect
    from sendqueue.shared.topology import prepare_bus

    conn = await connect(config.amqp.url, "sendqueue-bench")
    try:
        await prepare_bus(conn, config)
    finally:
        await conn.close()


async def queue_depth(amqp_url: str, queue: str) -> int:
    """Ready messages of a queue from AMQP (queue.declare-ok): current, unlike the management
    API and `rabbitmqctl list_queues`, which lag by seconds for quorum queues."""
    import aio_pika

    conn = await aio_pika.connect(amqp_url)
    try:
        channel = await conn.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)
    finally:
        await conn.close()


# -- Orthanc ------------------------------------------------------------------------------


def upload_file(orthanc: Any, path: Path, timeout: float = 600) -> str:
    """POST a file to Orthanc streamed from disk; returns the instance id."""
    with open(path, "rb") as body:
        req = urllib.request.Request(orthanc.url + "/instances", data=body, method="POST")
        token = base64.b64encode(f"{orthanc.username}:{orthanc.password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        req.add_header("Content-Type", "application/dicom")
        req.add_header("Content-Length", str(path.stat().st_size))
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return str(json.loads(resp.read())["ID"])


def upload_many(orthanc: Any, blobs: Sequence[bytes], workers: int = 4) -> list[str]:
    """Upload in-memory instances with a few threads; ids in the order of blobs."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(orthanc.upload, blobs))


# -- sendqueue services -------------------------------------------------------------------


async def wait_until(
    check: Any, timeout: float, interval: float = 0.1, what: str = "condition"
) -> float:
    """Poll an async or sync check() until truthy; returns time.monotonic() when it was."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached after {timeout:.0f} s")
        await asyncio.sleep(interval)


def check_alive(pipeline: Any, *names: str) -> None:
    """Raise if a spawned service died (its log tail in the message)."""
    for name in names:
        proc = pipeline._procs.get(name)
        if proc is not None and proc.poll() is not None:
            log = pipeline.tmp / f"{name}.log"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"sendqueue {name} exited ({proc.returncode}):\n{tail}")


async def failures_by_class(pipeline: Any) -> dict[str, int]:
    """The sender's failed attempts by reason class (sendqueue_jobs_failed_total)."""
    counts: dict[str, int] = {}
    for (name, labels), value in (await pipeline.metrics("sender")).items():
        if name == "sendqueue_jobs_failed_total" and value:
            cls = dict(labels).get("class", "?")
            counts[cls] = counts.get(cls, 0) + int(value)
    return counts


# -- figures ------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (also readable in a terminal)."""
    cells = [[str(h) for h in headers], *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return (
            f"{value:.3g}"
            if abs(value) < 10
            else f"{value:.1f}"
            if abs(value) < 1000
            else (f"{value:.0f}")
        )
    return str(value)
