"""A backlog of 100,000 jobs, its destination down then back, drains at the steady rate.

    .venv/bin/python bench/backlog_drain.py                                  # 100,000 jobs
    .venv/bin/python bench/backlog_drain.py --instances 2000 --steady 500    # a quick run
    .venv/bin/python bench/backlog_drain.py --json /tmp/drain.json --profile /tmp/drain-prof

Target 4 of the speed issue: a 100k-job backlog (destination down, then back) drains at
>= 90 % of the steady rate, with RabbitMQ's memory under its watermark and the sender's RSS
flat. Everything runs on loopback: a source Orthanc, DCMTK storescp as the destination
(`--fork`, TCP_NODELAY=1, as in compare.py), and `sendqueue retry`, `sender` and `ingest`
as processes (tests/integration/harness.Pipeline) in a fresh vhost (sq-bench-*). The
destination is named `peer`, as in compare.py, whose paused-backlog helpers this reuses.

1. Steady rate. `--steady` synthetic instances (`--size-kb` each) are uploaded; the
   destination is paused through the admin API, ingest queues every job, the destination
   is resumed: timed from the resume until storescp holds them all (the last file's mtime).
2. The backlog. storescp is stopped (connection refused: the sender finds the destination
   unreachable, puts back the jobs it took and probes it; its state is "down", not
   "paused"), then `--instances` more instances are uploaded, which ingest queues as they
   arrive (none of this is timed). Once every job waits in the queue, storescp starts again
   on the same port: the drain is timed from the moment it listens until it holds every
   instance, overall and per 10 % slice of the instances (from the files' mtimes).
   RabbitMQ's memory (GET /api/nodes: mem_used against mem_limit, its high watermark; the
   vhost's queues' memory) is sampled every 2 s and the sender's RSS every 0.5 s, from the
   stop of storescp to the end of the drain.
3. Steady again (unless --no-steady-after): as 1, with `--steady` new instances, to show
   whether the machine's load (shared) changed meanwhile. The ratio uses step 1.

The backlog's instances are uploaded after the steady measure because ingest queues all
of Orthanc's change log: they arrive during the outage, as a modality keeps sending while
its PACS is down.

Each measure also gives the CPU ms per job of each sendqueue process, Orthanc and the
machine's RabbitMQ (shared), and the machine's busy cores.

Checks: drain/steady >= 0.90; mem_used below mem_limit and no memory alarm; the sender's
RSS flat (its least-squares growth across the drain and the difference between the
medians of the drain's first and last tenths both under 5 MB); storescp holds every
instance, nothing parked. Exit status 1 if one fails. Every process is stopped by PID; the
temp dir and the vhost are removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    ROOT,
    RssSampler,
    bench_vhost,
    broker_cpu_s,
    check_alive,
    cores_busy,
    cpu_s,
    failures_by_class,
    machine_jiffies,
    median,
    status_mb,
    table,
    upload_many,
    wait_until,
)
from bench.compare import _paused_backlog, _wait_queued

DESTINATION = "peer"  # compare.py's paused-backlog helpers pause and count this one
COLUMNS = 64
SERIES_SIZE = 500
STUDY_SIZE = 5000
UPLOAD_CHUNK = 2000
UPLOAD_WORKERS = 4
PROGRESS_EVERY = 10.0
TARGET_RATIO = 0.90
FLAT_MB = 5.0


# -- synthetic instances ------------------------------------------------------------------


class Instances:
    """Synthetic instances made fast: one encoded template whose UIDs are replaced by
    others of the same length, so no length in the file changes. A new series every 500
    instances, a new study every 5,000 (one series of 100,000 is not what Orthanc sees)."""

    def __init__(self, size_kb: int) -> None:
        from pydicom.uid import PYDICOM_ROOT_UID

        from tests.support.dicom_factory import make_instance

        self._run = f"{PYDICOM_ROOT_UID}{random.randrange(10**11, 10**12 - 1)}"
        self._holders = [self._uid(kind, 0, f"{PYDICOM_ROOT_UID}{'9' * 12}") for kind in (1, 2, 3)]
        rows = max(1, size_kb * 1024 // (2 * COLUMNS))
        study, series, sop = self._holders
        self._template = make_instance(study, series, sop, rows=rows, cols=COLUMNS)
        for holder in self._holders:
            if holder.encode() not in self._template:
                raise RuntimeError(f"UID {holder} not found in the encoded template")
        self.size = len(self._template)

    @staticmethod
    def _uid(kind: int, n: int, root: str) -> str:
        return f"{root}.{kind}.{10**9 + n}"  # no leading zero, always the same length

    def make(self, i: int) -> tuple[str, bytes]:
        """The i-th instance: (SOPInstanceUID, Part-10 bytes)."""
        uids = [self._uid(1, i // STUDY_SIZE, self._run), self._uid(2, i // SERIES_SIZE, self._run),
                self._uid(3, i, self._run)]  # fmt: skip
        data = self._template
        for holder, uid in zip(self._holders, uids, strict=True):
            data = data.replace(holder.encode(), uid.encode())
        return uids[2], data


def upload(orthanc: Any, instances: Instances, indices: range, label: str) -> set[str]:
    """Upload instances[indices] with a few threads, printing progress; their UIDs."""
    uids: set[str] = set()
    started = time.monotonic()
    for start in range(indices.start, indices.stop, UPLOAD_CHUNK):
        chunk = [instances.make(i) for i in range(start, min(indices.stop, start + UPLOAD_CHUNK))]
        _upload_chunk(orthanc, [data for _, data in chunk])
        uids.update(uid for uid, _ in chunk)
        took = time.monotonic() - started
        print(f"  {label}: uploaded {len(uids)}/{len(indices)} ({len(uids) / took:.0f}/s)",
              flush=True)  # fmt: skip
    return uids


def _upload_chunk(orthanc: Any, blobs: list[bytes], attempts: int = 3) -> None:
    """upload_many, again on an HTTP 5xx, with the tail of Orthanc's log printed (a 500
    once ended a run at its 4,000th upload). Orthanc answers "AlreadyStored" for the
    instances it has, with no new change, so ingest queues each instance once."""
    for attempt in range(1, attempts + 1):
        try:
            upload_many(orthanc, blobs, workers=UPLOAD_WORKERS)
            return
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == attempts:
                raise
            print(f"  upload: HTTP {exc.code}, again; Orthanc's log:\n{orthanc.log_tail(10)}")
            time.sleep(1.0)


# -- RabbitMQ's memory --------------------------------------------------------------------


class BrokerMemory:
    """Samples RabbitMQ's memory in a thread: each node's mem_used against its mem_limit
    (the high watermark) and memory alarm, and the memory of one vhost's queues."""

    def __init__(self, vhost: str, interval: float = 2.0) -> None:
        self.vhost = vhost
        self.interval = interval
        self.samples: list[dict[str, Any]] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from tests.support.rabbit import management_request

        queues = f"/api/queues/{quote(self.vhost, safe='')}?columns=name,memory,messages"
        while not self._stop.is_set():
            try:
                nodes = management_request("GET", "/api/nodes?columns=name,mem_used,mem_limit,"
                                                  "mem_alarm")  # fmt: skip
                listed = management_request("GET", queues)
            except (OSError, ValueError):
                self.errors += 1
            else:
                self.samples.append(_broker_sample(nodes, listed))
            self._stop.wait(self.interval)

    def __enter__(self) -> BrokerMemory:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


def _broker_sample(nodes: list[dict[str, Any]], queues: list[dict[str, Any]]) -> dict[str, Any]:
    worst = max(nodes, key=lambda n: n.get("mem_used", 0) / max(n.get("mem_limit", 1), 1))
    return {
        "t": time.time(),
        "mem_used": int(worst.get("mem_used", 0)),
        "mem_limit": int(worst.get("mem_limit", 0)),
        "alarm": any(n.get("mem_alarm") for n in nodes),
        "queues_memory": sum(int(q.get("memory") or 0) for q in queues),
        "messages": sum(int(q.get("messages") or 0) for q in queues),
    }


def broker_figures(samples: list[dict[str, Any]]) -> dict[str, Any]:
    if not samples:
        return {"samples": 0}
    peak = max(samples, key=lambda s: s["mem_used"] / max(s["mem_limit"], 1))
    return {
        "samples": len(samples),
        "mem_used_max": peak["mem_used"],
        "mem_limit": peak["mem_limit"],
        "mem_used_max_fraction": peak["mem_used"] / max(peak["mem_limit"], 1),
        "mem_used_first": samples[0]["mem_used"],
        "alarm_seen": any(s["alarm"] for s in samples),
        "vhost_queues_memory_max": max(s["queues_memory"] for s in samples),
        "vhost_messages_max": max(s["messages"] for s in samples),
        # (seconds since the first sample, mem_used MiB, vhost queues' MiB, messages)
        "series": [
            (
                round(s["t"] - samples[0]["t"], 1),
                round(s["mem_used"] / 2**20, 1),
                round(s["queues_memory"] / 2**20, 2),
                s["messages"],
            )
            for s in samples
        ],
    }


# -- the pipeline ---------------------------------------------------------------------------


@dataclass
class Bench:
    source: Any
    scp: Any
    pipeline: Any
    instances: Instances
    sender_pid: int
    profile_dir: Path | None = None


async def sent_total(pipeline: Any) -> int:
    return int(await pipeline.metric_sum("sender", "sendqueue_jobs_sent_total"))


async def admin_post(pipeline: Any, action: str) -> None:
    status, answer = await pipeline.admin("POST", f"/api/destinations/{DESTINATION}/{action}")
    if status != 200:
        raise RuntimeError(f"{action}: HTTP {status} {answer}")


async def destination_state(pipeline: Any) -> dict[str, Any]:
    """The destination's line of GET /api/queues (state, state_reason, ready...)."""
    status, body = await pipeline.admin("GET", "/api/queues")
    if status != 200:
        raise RuntimeError(f"GET /api/queues: HTTP {status} {body}")
    return dict(next(d for d in body["destinations"] if d["name"] == DESTINATION))


async def wait_state(pipeline: Any, state: str, timeout: float) -> float:
    async def reached() -> bool:
        check_alive(pipeline, "ingest", "retry", "sender")
        return (await destination_state(pipeline))["state"] == state

    return await wait_until(reached, timeout=timeout, interval=0.2, what=f"state {state!r}")


async def wait_queued(bench: Bench, n: int) -> None:
    """Every job of the backlog ready in the work queue (ingest may lag the upload)."""
    from tests.integration.harness import queue_ready

    last = 0.0

    async def full() -> bool:
        nonlocal last
        check_alive(bench.pipeline, "ingest", "retry", "sender")
        ready = await queue_ready(bench.pipeline, f"work.{DESTINATION}")
        if time.monotonic() - last >= PROGRESS_EVERY:
            last = time.monotonic()
            print(f"  backlog: {ready}/{n} jobs queued", flush=True)
        return ready >= n

    await wait_until(full, timeout=max(600.0, n / 20), interval=0.5, what="every job queued")


async def wait_sent(bench: Bench, target: int, n: int, label: str) -> float:
    """Until the sender counts `target` jobs sent in all (`n` of them in this phase)."""
    started = last = time.monotonic()
    first = target - n

    async def all_sent() -> bool:
        nonlocal last
        check_alive(bench.pipeline, "ingest", "retry", "sender")
        sent = await sent_total(bench.pipeline) - first
        if time.monotonic() - last >= PROGRESS_EVERY:
            last = time.monotonic()
            rss = status_mb(bench.sender_pid, "VmRSS")
            print(f"  {label}: {sent}/{n} sent after {last - started:.0f} s; sender RSS"
                  f" {rss:.1f} MB", flush=True)  # fmt: skip
        return sent >= n

    return await wait_until(all_sent, timeout=max(600.0, n / 20), interval=0.5, what="all sent")


def cpu_now(bench: Bench) -> dict[str, float]:
    """CPU seconds used so far by each sendqueue process, Orthanc and the machine's
    RabbitMQ (shared: others' traffic counts in it)."""
    pids = {name: proc.pid for name, proc in bench.pipeline._procs.items()}
    cpu = {name: cpu_s(pid) for name, pid in {**pids, "orthanc": bench.source.pid}.items()}
    return {**cpu, "rabbitmq": broker_cpu_s()}


def cpu_per_job(bench: Bench, before: dict[str, float], n: int) -> dict[str, float]:
    return {k: (v - before.get(k, 0.0)) * 1000 / n for k, v in cpu_now(bench).items()}


def arrivals(scp: Any, uids: set[str]) -> list[float]:
    """When storescp wrote each of these instances it holds (its files' mtimes), sorted."""
    from tests.support.scp import _uid_from_name

    times = {}
    with os.scandir(scp.output_dir) as entries:
        for entry in entries:
            uid = _uid_from_name(entry.name)
            if uid in uids and entry.is_file():
                times[uid] = entry.stat().st_mtime
    return sorted(times.values())


# -- the measures ---------------------------------------------------------------------------


async def queue_steady(bench: Bench, uids: set[str] | None, indices: range) -> set[str]:
    """The destination paused and `indices` queued: the first time by compare.py's helper
    (uploaded already, ingest not running yet), later with ingest running."""
    n = len(indices)
    if uids is not None:
        await _paused_backlog(bench.pipeline, n)
        return uids
    before = await sent_total(bench.pipeline)
    await admin_post(bench.pipeline, "pause")
    await asyncio.sleep(1.0)  # the pause travels to the sender as a broadcast
    uids = await asyncio.to_thread(upload, bench.source, bench.instances, indices, "steady")
    await _wait_queued(bench.pipeline, n)
    if await sent_total(bench.pipeline) != before:
        raise RuntimeError("the paused destination sent jobs: the steady timing is void")
    return uids


async def steady(bench: Bench, indices: range, uids: set[str] | None = None) -> dict[str, Any]:
    n = len(indices)
    uids = await queue_steady(bench, uids, indices)
    before = await sent_total(bench.pipeline)
    cpu, machine = cpu_now(bench), machine_jiffies()
    resumed = time.time()
    await admin_post(bench.pipeline, "resume")
    await wait_sent(bench, before + n, n, "steady")
    times = arrivals(bench.scp, uids)
    if len(times) != n:
        raise RuntimeError(f"steady: storescp holds {len(times)} of {n} instances")
    return {
        "instances": n,
        "seconds": times[-1] - resumed,
        "per_s": n / (times[-1] - resumed),
        "sustained_per_s": (n - 1) / (times[-1] - times[0]) if times[-1] > times[0] else 0.0,
        "cpu_ms_per_job": cpu_per_job(bench, cpu, n),
        "cores_busy": cores_busy(machine, machine_jiffies()),
    }


async def backlog(bench: Bench, indices: range) -> dict[str, Any]:
    """Receiver down, the backlog queued, receiver back: the drain, RSS and broker memory."""
    n, pipeline = len(indices), bench.pipeline
    bench.scp.stop()  # connection refused from now on
    before = await sent_total(pipeline)
    offset = time.time() - time.monotonic()
    with RssSampler(bench.sender_pid, interval=0.5) as rss, BrokerMemory(pipeline.vhost) as broker:
        outage = time.time()
        uids = await asyncio.to_thread(upload, bench.source, bench.instances, indices, "backlog")
        uploaded = time.time()
        await wait_queued(bench, n)
        queued = time.time()
        down = await destination_state(pipeline)
        if down["state"] != "down" or await sent_total(pipeline) != before:
            raise RuntimeError(f"the destination is not down, or jobs went out: {down}")
        drain = await drain_backlog(bench, before, n)
        times = arrivals(bench.scp, uids)
    if not times:
        raise RuntimeError("storescp holds none of the backlog")
    figures = {
        "instances": n,
        "held": len(times),
        "outage_to_uploaded_s": uploaded - outage,
        "outage_to_queued_s": queued - outage,
        "state_while_down": down["state"],
        "state_reason": down["state_reason"],
        **drain,
        **drain_figures(drain["listening"], times),
        "broker": broker_figures(broker.samples),
        "broker_sample_errors": broker.errors,
    }
    samples = [(t + offset, mb) for t, mb in rss.samples]
    figures["sender_rss"] = rss_figures(samples, outage, drain["listening"], times[-1])
    return figures


async def drain_backlog(bench: Bench, before: int, n: int) -> dict[str, Any]:
    """storescp listens again; until the sender counts every job of the backlog sent."""
    from bench.pipeline_throughput import _profile

    pipeline = bench.pipeline
    cpu, machine = cpu_now(bench), machine_jiffies()
    returned = await pipeline.metric_sum("sender", "sendqueue_jobs_returned_total")
    # _profile reads only .profile_dir of what it is given.
    profiler = _profile(cast(Any, bench), bench.sender_pid, "sender-drain", wait=0)
    spawned = time.time()
    bench.scp.start()  # returns once the port accepts connections
    listening, listening_mono = time.time(), time.monotonic()
    try:
        up_s = await wait_state(pipeline, "up", timeout=120) - listening_mono
        await wait_sent(bench, before + n, n, "drain")
    finally:
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            profiler.wait(60)
    return {
        "receiver_spawned": spawned,
        "listening": listening,
        "state_up_after_s": up_s,
        "returned_while_down": returned,
        "cpu_ms_per_job": cpu_per_job(bench, cpu, n),
        "cores_busy": cores_busy(machine, machine_jiffies()),
        "sent_in_phase": await sent_total(pipeline) - before,
    }


def drain_figures(start: float, times: list[float], parts: int = 10) -> dict[str, Any]:
    """The overall rate from `start`, and the rate of each tenth of the instances."""
    n = len(times)
    slices, prev_t, prev_i = [], start, 0
    for k in range(1, parts + 1):
        i = round(k * n / parts)
        t = times[i - 1]
        slices.append({"to": i, "end_s": t - start, "per_s": (i - prev_i) / max(t - prev_t, 1e-6)})
        prev_t, prev_i = t, i
    return {
        "seconds": times[-1] - start,
        "per_s": n / (times[-1] - start),
        "first_file_s": times[0] - start,
        "sustained_per_s": (n - 1) / (times[-1] - times[0]) if times[-1] > times[0] else 0.0,
        "slices": slices,
    }


def rss_figures(
    samples: list[tuple[float, float]], outage: float, start: float, end: float
) -> dict[str, Any]:
    """The sender's RSS (MiB) while down and while draining: spread, first and last tenth
    of the drain's time, and the least-squares growth across the drain."""
    down = [mb for t, mb in samples if outage <= t < start]
    during = [(t, mb) for t, mb in samples if start <= t <= end]
    tenth = (end - start) / 10
    tenths = [_median_in(during, start + k * tenth, start + (k + 1) * tenth) for k in range(10)]
    slope = statistics.linear_regression([t for t, _ in during], [mb for _, mb in during]).slope
    mbs = [mb for _, mb in during]
    return {
        "samples": len(during),
        "down_min": min(down, default=float("nan")),
        "down_max": max(down, default=float("nan")),
        "min": min(mbs),
        "median": median(mbs),
        "max": max(mbs),
        "tenths_median": tenths,
        "first_tenth_median": tenths[0],
        "last_tenth_median": tenths[-1],
        "fitted_growth_mb": slope * (end - start),
        # (seconds since the outage began, MiB), every 0.5 s
        "series": [(round(t - outage, 1), round(mb, 2)) for t, mb in samples],
    }


def _median_in(samples: list[tuple[float, float]], low: float, high: float) -> float:
    """The median of the samples between two times, else the last one before (a short
    drain has tenths shorter than the sampling interval)."""
    inside = [mb for t, mb in samples if low <= t <= high]
    return median(inside or [mb for t, mb in samples if t <= high][-1:])


# -- the run ----------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from tests.integration.harness import Pipeline, dicom_destination
    from tests.support.orthanc import OrthancProcess
    from tests.support.scp import StorescpProcess

    instances, m, n = Instances(args.size_kb), args.steady, args.instances
    figures: dict[str, Any] = {"args": vars(args), "instance_bytes": instances.size,
                               "load_before": os.getloadavg()}  # fmt: skip
    print(
        f"{m} + {n}{f' + {m}' if args.steady_after else ''} instances of"
        f" {instances.size / 1024:.1f} KB; sender concurrency {args.concurrency}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="sq-bench-") as name, ExitStack() as stack:
        tmp = Path(name)
        source = stack.enter_context(OrthancProcess(aet="SOURCE", start_timeout=60))
        uids = upload(source, instances, range(m), "steady")
        scp = stack.enter_context(StorescpProcess(output_dir=tmp / "received"))
        vhost = stack.enter_context(bench_vhost())
        destination = dicom_destination(DESTINATION, scp.port, scp.aet,
                                        concurrency=args.concurrency)  # fmt: skip
        pipeline = Pipeline(amqp_url=vhost.amqp_url, orthanc=source, tmp=tmp,
                            destinations=[destination])  # fmt: skip
        try:
            pipeline.spawn("retry")
            sender = pipeline.spawn("sender")
            await pipeline.wait_healthy("retry", "sender", timeout=120)
            profile = Path(args.profile) if args.profile else None
            bench = Bench(source, scp, pipeline, instances, sender.pid, profile)
            figures["steady"] = await steady(bench, range(m), uids)
            print(f"steady: {figures['steady']['per_s']:.1f} inst/s", flush=True)
            figures["backlog"] = await backlog(bench, range(m, m + n))
            if args.steady_after:
                figures["steady_after"] = await steady(bench, range(m + n, m + n + m))
            figures["parked"] = (await pipeline.parked())["total"]
            figures["failed_by_class"] = await failures_by_class(pipeline)
            figures["sent_total"] = await sent_total(pipeline)
        finally:
            await pipeline.stop()
    figures["load_after"] = os.getloadavg()
    figures["verdicts"] = verdicts(figures)
    return figures


def verdicts(f: dict[str, Any]) -> dict[str, Any]:
    b, rss = f["backlog"], f["backlog"]["sender_rss"]
    broker = b["broker"]
    ratio = b["per_s"] / f["steady"]["per_s"]
    return {
        "ratio": ratio,
        "rate": ratio >= TARGET_RATIO,
        "broker_memory": broker["samples"] > 0
        and not broker["alarm_seen"]
        and broker["mem_used_max"] < broker["mem_limit"],
        "sender_rss_flat": rss["fitted_growth_mb"] < FLAT_MB
        and rss["last_tenth_median"] - rss["first_tenth_median"] < FLAT_MB,
        "nothing_lost": b["held"] == b["instances"] and f["parked"] == 0,
    }


def render(f: dict[str, Any]) -> str:
    s, b, v = f["steady"], f["backlog"], f["verdicts"]
    rss, broker = b["sender_rss"], b["broker"]
    mb = 1024 * 1024
    rows: list[list[Any]] = [
        [f"steady: {s['instances']} queued jobs, paused then resumed", f"{s['per_s']:.1f} inst/s",
         f"{s['seconds']:.1f} s from the resume; first to last file {s['sustained_per_s']:.1f}/s;"
         f" CPU ms/job {_cpu(s)}; cores busy {s['cores_busy']:.2f}"],
        ["backlog: storescp stopped until every job queued", f"{b['outage_to_queued_s']:.0f} s",
         f"upload done after {b['outage_to_uploaded_s']:.0f} s; state \"{b['state_while_down']}\""
         f" ({_short(b['state_reason'])}); jobs put back {b['returned_while_down']:.0f}"],
        ["drain: storescp listening until the state is \"up\"", f"{b['state_up_after_s']:.2f} s",
         f"first file after {b['first_file_s']:.2f} s"],
        [f"**drain: storescp listening until it holds all {b['instances']}**",
         f"**{b['per_s']:.1f} inst/s**",
         f"{b['seconds']:.1f} s; first to last file {b['sustained_per_s']:.1f}/s; CPU ms/job"
         f" {_cpu(b)}; cores busy {b['cores_busy']:.2f}"],
        ["**drain / steady**", f"**{v['ratio']:.2f}**",
         f"target >= {TARGET_RATIO:.2f}: {'met' if v['rate'] else 'NOT met'}"],
        ["drain per 10 % slice (inst/s)", ", ".join(f"{x['per_s']:.0f}" for x in b["slices"]),
         "slices end at " + ", ".join(f"{x['end_s']:.1f}" for x in b["slices"]) + " s"],
        ["RabbitMQ node memory, whole backlog (max)",
         f"{broker['mem_used_max'] / mb:.0f} MB of {broker['mem_limit'] / mb:.0f} MB",
         f"{broker['mem_used_max_fraction'] * 100:.1f} % of the watermark; at the start"
         f" {broker['mem_used_first'] / mb:.0f} MB; memory alarm"
         f" {'SEEN' if broker['alarm_seen'] else 'never'}; {broker['samples']} samples"],
        ["the vhost's queues (max)", f"{broker['vhost_queues_memory_max'] / mb:.1f} MB",
         f"{broker['vhost_messages_max']} messages"],
        ["sender RSS while down", f"{rss['down_min']:.1f}-{rss['down_max']:.1f} MB", ""],
        ["sender RSS during the drain: min / median / max",
         f"{rss['min']:.1f} / {rss['median']:.1f} / {rss['max']:.1f} MB",
         "medians per tenth of the drain: "
         + ", ".join(f"{x:.1f}" for x in rss["tenths_median"])
         + f"; fitted growth {rss['fitted_growth_mb']:+.1f} MB:"
         f" {'flat' if v['sender_rss_flat'] else 'GROWING'}"],
        ["storescp holds / parked", f"{b['held']} of {b['instances']}",
         f"parked {f['parked']}; sent in the drain {b['sent_in_phase']}; failed attempts"
         f" {f['failed_by_class'] or 0}"],
    ]  # fmt: skip
    if "steady_after" in f:
        a = f["steady_after"]
        rows.append(
            ["steady again, after the drain (a check)", f"{a['per_s']:.1f} inst/s",
             f"first to last file {a['sustained_per_s']:.1f}/s; CPU ms/job {_cpu(a)};"
             f" cores busy {a['cores_busy']:.2f}"]
        )  # fmt: skip
    return table(["measure", "figure", "detail"], rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=100_000, help="jobs in the backlog")
    parser.add_argument("--steady", type=int, default=5000, help="jobs of the steady measure")
    parser.add_argument("--size-kb", type=int, default=16, help="pixel data per instance")
    parser.add_argument("--concurrency", type=int, default=4, help="sender associations")
    parser.add_argument("--no-steady-after", dest="steady_after", action="store_false",
                        help="skip the second steady measure after the drain")  # fmt: skip
    parser.add_argument("--json", default="", help="write the figures here (else stdout)")
    parser.add_argument("--profile", default="", help="py-spy raw stacks of the sender's drain")
    args = parser.parse_args()
    if args.instances < 10 or args.steady < 10:
        parser.error("--instances and --steady: at least 10")
    os.chdir(ROOT)
    figures = asyncio.run(run(args))
    print()
    print(render(figures))
    v = figures["verdicts"]
    print(f"\nload average (1, 5, 15 min) before: {_loads(figures['load_before'])};"
          f" after: {_loads(figures['load_after'])}")  # fmt: skip
    print("target 4: " + ", ".join(f"{k} {'OK' if v[k] else 'NO'}" for k in VERDICTS))
    document = json.dumps(figures, indent=2)
    if args.json:
        Path(args.json).write_text(document)
        print(f"JSON: {args.json}")
    else:
        print(document)
    return 0 if all(v[k] for k in VERDICTS) else 1


VERDICTS = ("rate", "broker_memory", "sender_rss_flat", "nothing_lost")


def _cpu(phase: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in phase["cpu_ms_per_job"].items())


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _loads(loads: tuple[float, ...]) -> str:
    return ", ".join(f"{x:.2f}" for x in loads)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
