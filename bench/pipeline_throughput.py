"""Instances per second through the whole pipeline (ingest -> sender -> storescp).

    .venv/bin/python bench/pipeline_throughput.py [--instances 500] [--runs 3] [--concurrency 4]
    .venv/bin/python bench/pipeline_throughput.py --senders 2 --methods storescu,sendqueue
    .venv/bin/python bench/pipeline_throughput.py --large-mb 100

Throughput mode. N synthetic CT instances (512x512 16-bit, ~0.5 MB each) are uploaded once
to a source Orthanc. Then each run measures, against the same DCMTK storescp (`--fork`,
TCP_NODELAY=1):

    storescu    DCMTK storescu sending the N files over one association (TCP_NODELAY=1):
                the fastest a single C-STORE stream gets on this machine, the baseline
    orthanc     Orthanc's own bulk C-STORE: one synchronous POST /modalities/{id}/store
                with all N ids
    sendqueue   the three services as `sendqueue` processes on a fresh vhost and state:
                retry and sender are started and healthy first, then ingest starts with
                start_from = "beginning"; timed from spawning ingest until storescp holds
                every SOPInstanceUID (set equality). Ingest's start-up is in the time.
                With --senders N, N sender processes consume the same work queue (their
                CPU is summed, their peak RSS is the largest).

storescp's output dir is emptied before each measure. Figures are medians over the runs;
the ratio sendqueue/storescu is computed within each run (same machine load), then the
median taken. The sender's VmRSS after start-up and its VmHWM (peak) at the end are read
from /proc/<pid>/status.

Large mode (--large-mb N): one N MB multi-frame instance goes through the whole pipeline
to storescp; reports the sender process's RSS after start-up and its peak (VmHWM) before
SIGTERM.

Everything lives in one temp dir and one RabbitMQ vhost (sq-bench-*), removed at the end;
every process is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    MB,
    ROOT,
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
    tree_cpu_s,
    upload_file,
    wait_until,
)

METHODS = ["storescu", "orthanc", "sendqueue"]
LIMIT_MB = 150


class Setup:
    """What every measure shares: the files, the source Orthanc and storescp."""

    def __init__(
        self,
        tmp: Path,
        source: Any,
        scp: Any,
        files: Path,
        ids: list[str],
        uids: set[str],
        total_bytes: int,
        concurrency: int,
        senders: int = 1,
        data_path: str = "fast",
    ) -> None:
        self.tmp = tmp
        self.source = source
        self.scp = scp
        self.files = files
        self.ids = ids
        self.uids = uids
        self.total_bytes = total_bytes
        self.concurrency = concurrency
        self.senders = senders
        #: The DICOM destination's data_path for the sendqueue measure.
        self.data_path = data_path
        #: Backlog mode: the sender starts once every job waits in its queue.
        self.backlog = False
        #: `[sender] processes` for the sendqueue measure (None: the default, "auto").
        self.sender_processes: int | None = None
        #: One `sendqueue run` (ingest and retry in it, the sender in processes of its own)
        #: instead of the three services as separate commands.
        self.whole_run = False
        #: With whole_run: `sendqueue run` runs already (ingest from "now"), and the time
        #: starts at one `POST /api/send` of the instances' study, as native's one
        #: `POST /modalities/{id}/store` to an Orthanc that runs already.
        self.by_api = False
        #: Where py-spy writes the first sender's collapsed stacks per run (None: no profile).
        self.profile_dir: Path | None = None

    def clear_scp(self) -> None:
        for path in self.scp.output_dir.iterdir():
            if path.is_file():
                path.unlink()
            else:
                shutil.rmtree(path, ignore_errors=True)

    def check_received(self, method: str) -> None:
        got = self.scp.received_sop_uids()
        if got != self.uids:
            raise RuntimeError(
                f"{method}: storescp holds {len(got)} instances, {len(self.uids & got)} of the"
                f" {len(self.uids)} sent"
            )


# -- the three ways to send ---------------------------------------------------------------


async def by_storescu(setup: Setup, _run: int) -> dict[str, Any]:
    cmd = [
        "storescu", "-aet", "STORESCU", "-aec", setup.scp.aet,
        "127.0.0.1", str(setup.scp.port), "+sd", str(setup.files),
    ]  # fmt: skip
    env = dict(os.environ, TCP_NODELAY="1")
    started = time.monotonic()
    out = await asyncio.to_thread(
        subprocess.run, cmd, env=env, capture_output=True, text=True, timeout=1200
    )
    seconds = time.monotonic() - started
    if out.returncode != 0:
        raise RuntimeError(f"storescu failed ({out.returncode}): {out.stderr[-2000:]}")
    return {"seconds": seconds}


async def by_orthanc(setup: Setup, _run: int) -> dict[str, Any]:
    started = time.monotonic()
    await asyncio.to_thread(
        setup.source.post_json, "/modalities/storescp/store", setup.ids, timeout=1200
    )
    return {"seconds": time.monotonic() - started}


async def by_sendqueue(setup: Setup, run: int | str) -> dict[str, Any]:
    from tests.integration.harness import Pipeline, dicom_destination
    from tests.support.ports import free_port

    n = len(setup.uids)
    run_dir = setup.tmp / f"sendqueue-{run}"
    run_dir.mkdir()
    with bench_vhost() as vhost:
        pipeline = Pipeline(
            amqp_url=vhost.amqp_url,
            orthanc=setup.source,
            tmp=run_dir,
            destinations=[
                dicom_destination(
                    "storescp",
                    setup.scp.port,
                    setup.scp.aet,
                    concurrency=setup.concurrency,
                    data_path=setup.data_path,
                )
            ],
            sender={"processes": setup.sender_processes or "auto"},  # the product's default
            ingest={"start_from": "now"} if setup.by_api else None,
        )
        if setup.whole_run:
            return await _by_sendqueue_run(setup, pipeline, run_dir)
        # Extra sender processes: competing consumers of the same queue, own listen each.
        listens = ["sender", *(f"127.0.0.1:{free_port()}" for _ in range(setup.senders - 1))]
        keys = ["sender", *(f"sender-{i + 2}" for i in range(setup.senders - 1))]
        try:
            retry = pipeline.spawn("retry")
            if setup.backlog:
                ingest = pipeline.spawn("ingest")
                await _wait_backlog(pipeline, n)
            # Backlog: the sender takes jobs as soon as it connects, before it reports
            # healthy, so its time starts at its spawn (its start-up included).
            spawned = time.monotonic()
            senders = [pipeline.spawn("sender")] + [
                pipeline.spawn("sender", "--listen", listen, key=key)
                for listen, key in zip(listens[1:], keys[1:], strict=True)
            ]
            await pipeline.wait_healthy("retry", *listens, timeout=60)
            rss_start = status_mb(senders[0].pid, "VmRSS")
            cpu = {"sender": sum(tree_cpu_s(p.pid) for p in senders), "retry": cpu_s(retry.pid),
                   "orthanc": cpu_s(setup.source.pid), "rabbitmq": broker_cpu_s()}  # fmt: skip
            machine = machine_jiffies()
            profilers = [_profile(setup, senders[0].pid, f"sender-{run}")]
            started = spawned if setup.backlog else time.monotonic()
            spawned_wall = time.time()
            if not setup.backlog:
                ingest = pipeline.spawn("ingest")
                profilers.append(_profile(setup, ingest.pid, f"ingest-{run}", wait=0))
            first: float | None = None

            def all_received() -> bool:
                nonlocal first
                check_alive(pipeline, "ingest", "retry", *keys)
                count = len(setup.scp.received_sop_uids())
                if count and first is None:
                    first = time.monotonic()
                return count >= n

            done = await wait_until(all_received, timeout=1800, interval=0.05, what="all sent")
            used = {
                "sender": sum(tree_cpu_s(p.pid) for p in senders) - cpu["sender"],
                "ingest": cpu_s(ingest.pid),  # its start-up (imports) included
                "retry": cpu_s(retry.pid) - cpu["retry"],
                "orthanc": cpu_s(setup.source.pid) - cpu["orthanc"],
                "rabbitmq": broker_cpu_s() - cpu["rabbitmq"],
            }
            busy = cores_busy(machine, machine_jiffies())
            for profiler in profilers:
                if profiler is not None:
                    profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
                    profiler.wait(60)
            # Not timed: every C-STORE answered, then the sender's own count of it.
            await wait_until(
                lambda: _sent_is(pipeline, n, listens), timeout=60, interval=0.2, what="sent"
            )
            peak = max(status_mb(pid, "VmHWM") for p in senders for pid in sender_pids(p.pid))
            failed = sum(
                [await pipeline.metric_sum(x, "sendqueue_jobs_failed_total") for x in listens]
            )
            failed_by_class = await failures_by_class(pipeline)
        finally:
            await pipeline.stop()
    seconds = done - started
    if setup.profile_dir is not None:  # the services' logs (a line per job) with the stacks
        for log in run_dir.glob("*.log"):
            shutil.copy(log, setup.profile_dir / f"{log.stem}-{run}.log")
    # A running ingest: from the moment it reads the changes, its own start-up (imports,
    # the broker's connection, ~1 s here) left out, as for an ingest that runs already.
    warm = None if setup.backlog else seconds - (_ingest_ready(run_dir) - spawned_wall)
    return {
        "failed_by_class": failed_by_class,
        "seconds": seconds,
        "warm_seconds": warm,
        "cores_busy": busy,
        "steady_per_s": (n - 1) / (done - first) if first and done > first else float("nan"),
        "first_s": (first or done) - started,
        "sender_rss_start_mb": rss_start,
        "sender_peak_mb": peak,
        "failed_attempts": failed,
        **{f"cpu_ms_per_inst_{k}": v * 1000 / n for k, v in used.items()},
    }


async def _by_sendqueue_run(setup: Setup, pipeline: Any, run_dir: Path) -> dict[str, Any]:
    """`sendqueue run` as a user starts it, timed from its spawn until storescp holds every
    instance. CPU: "ingest" is the command's own process (ingest and retry), "sender" its
    sender processes."""
    n = len(setup.uids)
    try:
        if setup.by_api:
            command = pipeline.spawn("run")
            await pipeline.wait_healthy("ingest", "sender", "retry", timeout=60)
            study = setup.source.get_json(f"/instances/{setup.ids[0]}/study")["ID"]
            main_cpu, sender_cpu = cpu_s(command.pid), tree_cpu_s(command.pid)
        cpu = {"orthanc": cpu_s(setup.source.pid), "rabbitmq": broker_cpu_s()}
        machine = machine_jiffies()
        started, spawned_wall = time.monotonic(), time.time()
        if setup.by_api:
            answer = await pipeline.admin(
                "POST", "/api/send", {"destination": "storescp", "resources": [study]}
            )
            assert answer[0] == 200 and answer[1]["queued"] == n, answer
        else:
            command = pipeline.spawn("run")
            main_cpu = sender_cpu = 0.0
        seen: dict[str, float] = {}

        def all_received() -> bool:
            check_alive(pipeline, "run")
            # Before the end: the sender processes' CPU is counted while they live.
            main = cpu_s(command.pid)
            seen["sender"] = tree_cpu_s(command.pid) - main - (sender_cpu - main_cpu)
            seen["ingest"] = main - main_cpu
            return len(setup.scp.received_sop_uids()) >= n

        done = await wait_until(all_received, timeout=1800, interval=0.05, what="all sent")
        used = {**seen, "orthanc": cpu_s(setup.source.pid) - cpu["orthanc"],
                "rabbitmq": broker_cpu_s() - cpu["rabbitmq"]}  # fmt: skip
        busy = cores_busy(machine, machine_jiffies())
        await wait_until(
            lambda: _sent_is(pipeline, n, ["sender"]), timeout=60, interval=0.2, what="sent"
        )
        peak = max(status_mb(pid, "VmHWM") for pid in sender_pids(command.pid))
        failed = await pipeline.metric_sum("sender", "sendqueue_jobs_failed_total")
        failed_by_class = await failures_by_class(pipeline)
    finally:
        await pipeline.stop()
    seconds = done - started
    return {
        "failed_by_class": failed_by_class,
        "seconds": seconds,
        "warm_seconds": (
            None if setup.by_api else seconds - (_ingest_ready(run_dir, "run.log") - spawned_wall)
        ),
        "cores_busy": busy,
        "sender_peak_mb": peak,
        "failed_attempts": failed,
        "cpu_ms_per_inst_retry": 0.0,  # inside the command's own process, with ingest
        **{f"cpu_ms_per_inst_{k}": v * 1000 / n for k, v in used.items()},
    }


def sender_pids(supervisor: int) -> list[int]:
    """The sender processes a `sendqueue run` (or `sender`) command started."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rpartition(")")[2].split()[1]) == supervisor:
                found.append(int(stat.parent.name))
        except OSError:
            continue
    return found or [supervisor]


def _ingest_ready(run_dir: Path, log: str = "ingest.log") -> float:
    """When ingest first read Orthanc's changes (its log line's time, to the ms)."""
    for line in (run_dir / log).read_text(errors="replace").splitlines():
        if "following Orthanc changes after seq" in line:
            stamp, _, millis = line[:23].partition(",")
            return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000
    raise RuntimeError(f"ingest never read Orthanc's changes (see {run_dir / 'ingest.log'})")


async def _wait_backlog(pipeline: Any, n: int) -> None:
    from tests.integration.harness import queue_ready

    async def full() -> bool:
        check_alive(pipeline, "ingest", "retry")
        try:
            return await queue_ready(pipeline, "work.storescp") >= n
        except Exception:  # not declared yet
            return False

    await wait_until(full, timeout=600, interval=0.5, what="every job queued")


def _profile(
    setup: Setup, pid: int, name: str, wait: float = 0.5
) -> subprocess.Popen[bytes] | None:
    """py-spy sampling a process (all threads, 200 Hz) into collapsed stacks."""
    if setup.profile_dir is None:
        return None
    setup.profile_dir.mkdir(parents=True, exist_ok=True)
    out = setup.profile_dir / f"{name}.txt"
    cmd = [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid),
           "--rate", "200", "--format", "raw", "--threads", "--nonblocking",
           "--output", str(out)]  # fmt: skip
    profiler = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(wait)  # attached before ingest starts
    return profiler


async def _sent_is(pipeline: Any, n: int, listens: list[str] | None = None) -> bool:
    counts = [
        await pipeline.metric_sum(listen, "sendqueue_jobs_sent_total")
        for listen in listens or ["sender"]
    ]
    return sum(counts) >= n


SENDERS: dict[str, Callable[[Setup, int], Awaitable[dict[str, Any]]]] = {
    "storescu": by_storescu,
    "orthanc": by_orthanc,
    "sendqueue": by_sendqueue,
}


# -- throughput mode ----------------------------------------------------------------------


def make_files(files: Path, n: int) -> tuple[set[str], int]:
    from pydicom.uid import generate_uid

    from tests.support.dicom_factory import make_instance

    files.mkdir()
    study, series = generate_uid(), generate_uid()
    uids: set[str] = set()
    total = 0
    for i in range(n):
        uid = generate_uid()
        data = make_instance(study, series, sop_uid=uid, rows=512, cols=512, instance_number=i + 1)
        (files / f"{i:05d}.dcm").write_bytes(data)
        uids.add(uid)
        total += len(data)
    return uids, total


async def throughput(
    n: int,
    runs: int,
    concurrency: int,
    methods: list[str],
    senders: int = 1,
    *,
    data_path: str = "fast",
    profile: Path | None = None,
    backlog: bool = False,
) -> int:
    from tests.support.orthanc import OrthancProcess
    from tests.support.scp import StorescpProcess

    with tempfile.TemporaryDirectory(prefix="sq-bench-") as name, ExitStack() as stack:
        tmp = Path(name)
        files = tmp / "files"
        uids, total_bytes = make_files(files, n)
        source = stack.enter_context(OrthancProcess(aet="SOURCE", start_timeout=60))
        paths = sorted(files.iterdir())
        with ThreadPoolExecutor(4) as pool:
            ids = list(pool.map(lambda p: upload_file(source, p), paths))
        scp = stack.enter_context(StorescpProcess(output_dir=tmp / "storescp"))
        source.put_modality("storescp", scp.aet, scp.port)
        setup = Setup(
            tmp, source, scp, files, ids, uids, total_bytes, concurrency, senders, data_path
        )
        setup.profile_dir = profile
        setup.backlog = backlog
        print(
            f"{n} instances, {total_bytes / MB:.1f} MB ({total_bytes / n / MB:.2f} MB each);"
            f" {runs} run(s); sendqueue concurrency {concurrency} per sender,"
            f" {senders} sender process(es)",
            flush=True,
        )
        results: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
        for run in range(runs):
            for method in methods:
                setup.clear_scp()
                result = await SENDERS[method](setup, run)
                setup.check_received(method)
                result["per_s"] = n / result["seconds"]
                result["mb_s"] = total_bytes / MB / result["seconds"]
                results[method].append(result)
                line = {"run": run + 1, "method": method, **_rounded(result)}
                print(json.dumps(line), flush=True)
    report(results, n, total_bytes)
    return 0


def report(results: dict[str, list[dict[str, Any]]], n: int, total_bytes: int) -> None:
    rows = []
    for method, runs in results.items():
        seconds = median([r["seconds"] for r in runs])
        rows.append(
            [method, len(runs), seconds, n / seconds, total_bytes / MB / seconds,
             min(r["per_s"] for r in runs), max(r["per_s"] for r in runs)]
        )  # fmt: skip
    print()
    print(table(["method", "runs", "median s", "inst/s", "MB/s", "min inst/s", "max inst/s"], rows))
    sq, base = results.get("sendqueue"), results.get("storescu")
    if sq and base:
        ratios = [s["per_s"] / b["per_s"] for s, b in zip(sq, base, strict=True)]
        print(
            f"\nsendqueue/storescu, same run: median {median(ratios):.2f}"
            f" (runs: {', '.join(f'{r:.2f}' for r in ratios)})"
        )
    if sq and results.get("orthanc"):
        ratios = [s["per_s"] / o["per_s"] for s, o in zip(sq, results["orthanc"], strict=True)]
        print(f"sendqueue/orthanc,  same run: median {median(ratios):.2f}")
    if sq:
        print(
            f"sendqueue steady rate (first to last file): median"
            f" {median([r['steady_per_s'] for r in sq]):.0f} inst/s; first file after"
            f" {median([r['first_s'] for r in sq]):.2f} s"
        )
        print(
            f"sender RSS after start-up {median([r['sender_rss_start_mb'] for r in sq]):.1f} MB,"
            f" peak (VmHWM) {max(r['sender_peak_mb'] for r in sq):.1f} MB;"
            f" failed attempts {sum(r['failed_attempts'] for r in sq):.0f}"
            f" {[r['failed_by_class'] for r in sq if r['failed_by_class']] or ''}"
        )
        cpu = ", ".join(
            f"{who} {median([r[f'cpu_ms_per_inst_{who}'] for r in sq]):.1f}"
            for who in ("sender", "ingest", "retry", "orthanc")
        )
        print(f"CPU ms per instance while sendqueue ran (median): {cpu}")


def _rounded(result: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}


# -- large mode -----------------------------------------------------------------------------


async def large(size_mb: int) -> int:
    from tests.integration.harness import Pipeline, dicom_destination
    from tests.support.dicom_factory import write_large_instance
    from tests.support.orthanc import OrthancProcess
    from tests.support.scp import StorescpProcess

    with tempfile.TemporaryDirectory(prefix="sq-bench-") as name, ExitStack() as stack:
        tmp = Path(name)
        instance = tmp / "large.dcm"
        uid = write_large_instance(instance, size_mb * MB)
        size = instance.stat().st_size
        source = stack.enter_context(OrthancProcess(aet="SOURCE", start_timeout=60))
        upload_file(source, instance)
        instance.unlink()
        scp = stack.enter_context(StorescpProcess(output_dir=tmp / "storescp"))
        vhost = stack.enter_context(bench_vhost())
        pipeline = Pipeline(
            amqp_url=vhost.amqp_url,
            orthanc=source,
            tmp=tmp,
            destinations=[
                dicom_destination("storescp", scp.port, scp.aet, concurrency=1,
                                  dimse_timeout="10m")
            ],
        )  # fmt: skip
        try:
            pipeline.spawn("retry")
            sender = pipeline.spawn("sender")
            await pipeline.wait_healthy("retry", "sender", timeout=60)
            baseline = status_mb(sender.pid, "VmRSS")
            started = time.monotonic()
            pipeline.spawn("ingest")

            async def delivered() -> bool:
                check_alive(pipeline, "ingest", "sender", "retry")
                return await _sent_is(pipeline, 1)

            done = await wait_until(delivered, timeout=900, interval=0.2, what="delivered")
            peak = status_mb(sender.pid, "VmHWM")
            rss_end = status_mb(sender.pid, "VmRSS")
            failed = await pipeline.metric_sum("sender", "sendqueue_jobs_failed_total")
        finally:
            await pipeline.stop()
        received = scp.received_sop_uids()
    result = {
        "instance_bytes": size,
        "sender_baseline_mb": round(baseline, 1),
        "sender_peak_mb": round(peak, 1),
        "sender_rss_end_mb": round(rss_end, 1),
        "peak_minus_baseline_mb": round(peak - baseline, 1),
        "seconds": round(done - started, 2),
        "failed_attempts": failed,
        "storescp_has_it": uid in received,
    }
    print(json.dumps(result))
    ok = peak < LIMIT_MB and uid in received
    print(
        f"\nsender peak {peak:.1f} MB (baseline {baseline:.1f} MB, limit {LIMIT_MB} MB):"
        f" {'OK' if ok else 'OVER or not delivered'}"
    )
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4, help="sendqueue associations")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument(
        "--senders", type=int, default=1, help="sendqueue sender processes (competing consumers)"
    )
    parser.add_argument(
        "--backlog",
        action="store_true",
        help="start the sender only once every job waits in its queue (its drain rate)",
    )
    parser.add_argument("--data-path", default="fast", choices=["fast", "pynetdicom"])
    parser.add_argument(
        "--profile",
        default="",
        help="directory for py-spy's collapsed stacks of the sender, one file per run",
    )
    parser.add_argument(
        "--large-mb",
        type=int,
        default=0,
        help="instead: peak RSS of the sender forwarding one instance this big",
    )
    args = parser.parse_args()
    os.chdir(ROOT)
    if args.large_mb:
        return asyncio.run(large(args.large_mb))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown method(s): {', '.join(sorted(unknown))}")
    return asyncio.run(
        throughput(
            args.instances,
            args.runs,
            args.concurrency,
            methods,
            args.senders,
            data_path=args.data_path,
            profile=Path(args.profile) if args.profile else None,
            backlog=args.backlog,
        )
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
