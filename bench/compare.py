"""The whole forwarding comparison, from scratch, in one table.

    .venv/bin/python bench/compare.py                  # 0.5 MB and 5 MB, 3 runs each
    .venv/bin/python bench/compare.py --runs 5 --json /tmp/compare.json
    .venv/bin/python bench/compare.py --quick          # smoke test: a few instances, 1 run

For each instance size, N synthetic instances are uploaded once to a source Orthanc; then
each run sends them to the same receivers, one way after the other:

    native                Orthanc's own bulk C-STORE: POST /modalities/{id}/store, all ids
    storescu              DCMTK storescu, all files over one association (the wire limit)
    sendqueue-send        `sendqueue run` running already (defaults: data_path "fast", the
                          sender in processes of its own, `[sender] processes = "auto"`),
                          timed from one POST /api/send of the instances' study, as native
                          is from its one POST to an Orthanc that runs already
    sendqueue-run         the same command, timed from its start (ingest reading the change
                          log from its beginning: start-up included)
    sendqueue-fast        the three sendqueue services, data_path = "fast" (the default)
    sendqueue-pynetdicom  the same with data_path = "pynetdicom"
    peer-store            Orthanc's own peer store: POST /peers/{id}/store to a second Orthanc
    sendqueue-orthanc     the three sendqueue services, kind = "orthanc", to that second Orthanc
    sendqueue-dicomweb    the same, kind = "dicomweb" (STOW-RS to its DICOMweb plugin, batching)

The DICOM receiver is DCMTK storescp (--fork, TCP_NODELAY=1, as Orthanc); the sendqueue
legs are bench/pipeline_throughput.py's (ingest starts at the beginning of the change log;
timed until the receiver holds every instance; with --backlog the sender starts only once
every job waits in its queue, which measures the sender alone). Each row gives the median
instances/s and MB/s, the ratio to `native` (taken within each run, then the median), CPU
milliseconds per instance of each process that does the sending, and the peak RSS of the
sending process.
Everything lives in one temp dir and one RabbitMQ vhost per sendqueue measure, removed at
the end. No figure is asserted: --quick only shows that every leg works.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
    cores_busy,
    cpu_s,
    machine_jiffies,
    median,
    reset_peak,
    status_mb,
    table,
    upload_file,
)
from bench.pipeline_throughput import Setup, by_sendqueue

#: The HTTP kinds, compared with peer-store.
HTTP_METHODS = ["sendqueue-orthanc", "sendqueue-dicomweb"]
METHODS = ["native", "storescu", "sendqueue-send", "sendqueue-run", "sendqueue-fast",
           "sendqueue-pynetdicom", "peer-store", *HTTP_METHODS]  # fmt: skip
#: name -> (frames of 512x512 16-bit, instances, instances in --quick)
SIZES = {"0.5 MB": (1, 400, 12), "5 MB": (10, 60, 3)}
_MULTI_FRAME = "1.2.840.10008.5.1.4.1.1.7.3"


class Bench(Setup):
    """Setup plus the second Orthanc for peer store."""

    peer: Any = None


# -- the legs: each returns seconds, CPU per process and the sender's peak -----------------


async def native(bench: Bench, _run: int) -> dict[str, Any]:
    source = bench.source
    reset_peak(source.pid)
    before = cpu_s(source.pid)
    machine = machine_jiffies()
    started = time.monotonic()
    await asyncio.to_thread(source.post_json, "/modalities/storescp/store", bench.ids, 1800)
    seconds = time.monotonic() - started
    return {
        "seconds": seconds,
        "cores_busy": cores_busy(machine, machine_jiffies()),
        "cpu_s": {"orthanc": cpu_s(source.pid) - before},
        "peak_mb": status_mb(source.pid, "VmHWM"),
    }


async def storescu(bench: Bench, _run: int) -> dict[str, Any]:
    cmd = [
        "storescu", "-aet", "STORESCU", "-aec", bench.scp.aet,
        "127.0.0.1", str(bench.scp.port), "+sd", str(bench.files),
    ]  # fmt: skip
    env = dict(os.environ, TCP_NODELAY="1")
    started = time.monotonic()

    def run() -> tuple[int, Any]:
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        return proc.returncode, usage

    code, usage = await asyncio.to_thread(run)
    seconds = time.monotonic() - started
    if code != 0:
        raise RuntimeError(f"storescu failed ({code})")
    return {
        "seconds": seconds,
        "cpu_s": {"storescu": usage.ru_utime + usage.ru_stime},
        "peak_mb": usage.ru_maxrss / 1024,
    }


def sendqueue(
    data_path: str, whole_run: bool = False, by_api: bool = False
) -> Callable[[Bench, int], Awaitable[dict[str, Any]]]:
    async def leg(bench: Bench, run: int) -> dict[str, Any]:
        bench.data_path = data_path
        bench.whole_run = whole_run
        bench.by_api = by_api
        name = "send" if by_api else "run" if whole_run else data_path
        result = await by_sendqueue(bench, f"{name}-{run}")
        n = len(bench.uids)
        who = ("sender", "ingest", "retry", "orthanc", "rabbitmq")
        return {
            "seconds": result["seconds"],
            "warm_seconds": result["warm_seconds"],
            "cores_busy": result["cores_busy"],
            "cpu_s": {w: result[f"cpu_ms_per_inst_{w}"] * n / 1000 for w in who},
            "peak_mb": result["sender_peak_mb"],
            "failed_attempts": result["failed_attempts"],
        }

    return leg


async def peer_store(bench: Bench, _run: int) -> dict[str, Any]:
    source, peer = bench.source, bench.peer
    await asyncio.to_thread(peer.reset_database)
    reset_peak(source.pid)
    before = {"orthanc": cpu_s(source.pid), "peer orthanc": cpu_s(peer.pid)}
    started = time.monotonic()
    await asyncio.to_thread(source.post_json, "/peers/peer/store", bench.ids, 1800)
    seconds = time.monotonic() - started
    got = len(peer.instances())
    if got != len(bench.ids):
        raise RuntimeError(f"peer-store: the peer holds {got} of {len(bench.ids)} instances")
    return {
        "seconds": seconds,
        "cpu_s": {
            "orthanc": cpu_s(source.pid) - before["orthanc"],
            "peer orthanc": cpu_s(peer.pid) - before["peer orthanc"],
        },
        "peak_mb": status_mb(source.pid, "VmHWM"),
    }


# -- the HTTP kinds: sendqueue to the peer-store Orthanc ------------------------------------

#: STOW-RS batching of the dicomweb leg: up to `concurrency` instances in flight can batch.
DICOMWEB_BATCH = 16


def http_destination(bench: Bench, kind: str) -> dict[str, Any]:
    peer = bench.peer
    base = {"name": "peer", "username": peer.username, "password": peer.password,
            "concurrency": bench.concurrency}  # fmt: skip
    if kind == "orthanc":
        return {"kind": "orthanc", "url": peer.url, **base}
    return {"kind": "dicomweb", "url": peer.url + "/dicom-web", "batch_max_instances":
            DICOMWEB_BATCH, **base}  # fmt: skip


def sendqueue_http(kind: str) -> Callable[[Bench, int], Awaitable[dict[str, Any]]]:
    """The whole pipeline (ingest from the beginning, retry, sender) with one HTTP
    destination: the peer Orthanc of peer-store, emptied first; timed until the sender
    counts every job sent (a job counts only on the peer's parsed answer). With --backlog
    the sender is already running, its destination paused while ingest queues every job,
    and the time starts at the resume: the warm sender's drain rate."""

    async def leg(bench: Bench, run: int) -> dict[str, Any]:
        from bench.common import bench_vhost, check_alive, failures_by_class, wait_until
        from bench.pipeline_throughput import _profile, _sent_is
        from tests.integration.harness import Pipeline

        await asyncio.to_thread(bench.peer.reset_database)
        n = len(bench.ids)
        run_dir = bench.tmp / f"sendqueue-{kind}-{run}"
        run_dir.mkdir()
        with bench_vhost() as vhost:
            pipeline = Pipeline(amqp_url=vhost.amqp_url, orthanc=bench.source, tmp=run_dir,
                                destinations=[http_destination(bench, kind)])  # fmt: skip
            try:
                retry = pipeline.spawn("retry")
                sender = pipeline.spawn("sender")
                await pipeline.wait_healthy("retry", "sender", timeout=60)
                ingest = await _paused_backlog(pipeline, n) if bench.backlog else None
                who = {"sender": sender.pid, "retry": retry.pid, "orthanc": bench.source.pid,
                       "peer orthanc": bench.peer.pid}  # fmt: skip
                cpu = {name: cpu_s(pid) for name, pid in who.items()}
                profiler = _profile(bench, sender.pid, f"sender-{kind}-{run}", wait=0)
                started = time.monotonic()
                if bench.backlog:
                    status, answer = await pipeline.admin("POST", "/api/destinations/peer/resume")
                    if status != 200:
                        raise RuntimeError(f"resume: HTTP {status} {answer}")
                if ingest is None:
                    ingest = pipeline.spawn("ingest")

                async def all_sent() -> bool:
                    check_alive(pipeline, "ingest", "retry", "sender")
                    return await _sent_is(pipeline, n)

                done = await wait_until(all_sent, timeout=1800, interval=0.1, what="all sent")
                used = {name: cpu_s(pid) - cpu[name] for name, pid in who.items()}
                used["ingest"] = cpu_s(ingest.pid)  # its start-up (imports) included
                if profiler is not None:
                    profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
                    profiler.wait(60)
                peak = status_mb(sender.pid, "VmHWM")
                failed = await pipeline.metric_sum("sender", "sendqueue_jobs_failed_total")
                print(json.dumps({"failed_by_class": await failures_by_class(pipeline)}))
            finally:
                await pipeline.stop()
        got = len(bench.peer.instances())
        if got != n:
            raise RuntimeError(f"sendqueue-{kind}: the peer holds {got} of {n} instances")
        return {"seconds": done - started, "cpu_s": used, "peak_mb": peak,
                "failed_attempts": failed}  # fmt: skip

    return leg


async def _paused_backlog(pipeline: Any, n: int) -> Any:
    """Pause the running sender's destination, let ingest queue every job, check that
    none went out meanwhile: the caller times the drain from the resume (a warm sender,
    as Orthanc is warm for peer-store)."""
    from bench.pipeline_throughput import _sent_is

    status, answer = await pipeline.admin("POST", "/api/destinations/peer/pause")
    if status != 200:
        raise RuntimeError(f"pause: HTTP {status} {answer}")
    await asyncio.sleep(1.0)  # the pause travels to the sender as a broadcast
    ingest = pipeline.spawn("ingest")
    await _wait_queued(pipeline, n)
    if await _sent_is(pipeline, 1):
        raise RuntimeError("the paused destination sent jobs: the backlog timing is void")
    return ingest


async def _wait_queued(pipeline: Any, n: int) -> None:
    from bench.common import check_alive, wait_until
    from tests.integration.harness import queue_ready

    async def full() -> bool:
        check_alive(pipeline, "ingest", "retry")
        try:
            return await queue_ready(pipeline, "work.peer") >= n
        except Exception:  # not declared yet
            return False

    await wait_until(full, timeout=600, interval=0.5, what="every job queued")


def ratios_to_peer_store(measured: dict[str, list[dict[str, Any]]], method: str) -> list[float]:
    """An HTTP kind's rate over peer-store's, run by run (empty without peer-store)."""
    base = measured.get("peer-store") or []
    runs = measured.get(method, [])
    return [r["per_s"] / b["per_s"] for r, b in zip(runs, base, strict=False)]


LEGS: dict[str, Callable[[Bench, int], Awaitable[dict[str, Any]]]] = {
    "native": native,
    "storescu": storescu,
    "sendqueue-send": sendqueue("fast", whole_run=True, by_api=True),
    "sendqueue-run": sendqueue("fast", whole_run=True),
    "sendqueue-fast": sendqueue("fast"),
    "sendqueue-pynetdicom": sendqueue("pynetdicom"),
    "peer-store": peer_store,
    "sendqueue-orthanc": sendqueue_http("orthanc"),
    "sendqueue-dicomweb": sendqueue_http("dicomweb"),
}
#: Legs that C-STORE to storescp: its received set is checked after each.
_TO_STORESCP = {"native", "storescu", "sendqueue-send", "sendqueue-run", "sendqueue-fast",
                "sendqueue-pynetdicom"}  # fmt: skip


# -- one size -------------------------------------------------------------------------------


def make_files(files: Path, n: int, frames: int) -> tuple[set[str], int]:
    from pydicom.uid import generate_uid

    from tests.support.dicom_factory import make_instance

    files.mkdir()
    study, series = generate_uid(), generate_uid()
    uids: set[str] = set()
    total = 0
    for i in range(n):
        uid = generate_uid()
        extra = {"sop_class": _MULTI_FRAME, "frames": frames} if frames > 1 else {}
        data = make_instance(
            study, series, sop_uid=uid, rows=512, cols=512, instance_number=i + 1, **extra
        )
        (files / f"{i:05d}.dcm").write_bytes(data)
        uids.add(uid)
        total += len(data)
    return uids, total


async def one_size(
    label: str,
    frames: int,
    n: int,
    runs: int,
    concurrency: int,
    methods: list[str],
    backlog: bool = False,
    profile: str = "",
    sender_processes: int | None = None,
) -> list[dict[str, Any]]:
    from tests.support.orthanc import OrthancProcess
    from tests.support.scp import StorescpProcess

    with tempfile.TemporaryDirectory(prefix="sq-compare-") as name, ExitStack() as stack:
        tmp = Path(name)
        uids, total = make_files(tmp / "files", n, frames)
        source = stack.enter_context(OrthancProcess(aet="SOURCE", start_timeout=60))
        with ThreadPoolExecutor(4) as pool:
            ids = list(
                pool.map(lambda p: upload_file(source, p), sorted(tmp.joinpath("files").iterdir()))
            )
        scp = stack.enter_context(StorescpProcess(output_dir=tmp / "storescp"))
        source.put_modality("storescp", scp.aet, scp.port)
        bench = Bench(tmp, source, scp, tmp / "files", ids, uids, total, concurrency)
        bench.backlog = backlog
        bench.sender_processes = sender_processes
        bench.profile_dir = Path(profile) if profile else None
        if {"peer-store", *HTTP_METHODS} & set(methods):
            bench.peer = stack.enter_context(_peer_orthanc())
            source.request(
                "PUT",
                "/peers/peer",
                json.dumps(
                    {
                        "Url": bench.peer.url,
                        "Username": bench.peer.username,
                        "Password": bench.peer.password,
                    }
                ).encode(),
            )
        print(f"\n{label}: {n} instances, {total / MB:.1f} MB; {runs} run(s)", flush=True)
        measured: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
        for run in range(runs):
            for method in methods:
                bench.clear_scp()
                result = await LEGS[method](bench, run)
                if method in _TO_STORESCP:
                    bench.check_received(method)
                result["per_s"] = n / result["seconds"]
                measured[method].append(result)
                if result.get("warm_seconds"):
                    # The same run timed from the moment ingest read the changes.
                    warm = {**result, "seconds": result["warm_seconds"]}
                    warm["per_s"] = n / warm["seconds"]
                    measured.setdefault(f"{method} (warm)", []).append(warm)
                print(json.dumps({"size": label, "run": run + 1, "method": method,
                                  "per_s": round(result["per_s"], 1)}), flush=True)  # fmt: skip
        return _summary(label, n, total, measured)


def _peer_orthanc() -> Any:
    """The second Orthanc: the DICOMweb plugin too where installed (the STOW-RS target)."""
    from tests.support.orthanc import OrthancProcess, dicomweb_plugin_path

    plugin = dicomweb_plugin_path()
    return OrthancProcess(aet="PEER", start_timeout=60, plugins=[plugin] if plugin else [])


def _summary(
    label: str, n: int, total: int, measured: dict[str, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    rows = []
    base = measured.get("native")
    for method, runs in measured.items():
        seconds = median([r["seconds"] for r in runs])
        ratios = [r["per_s"] / b["per_s"] for r, b in zip(runs, base or [], strict=False)]
        processes = sorted({p for r in runs for p in r["cpu_s"]})
        rows.append(
            {
                "size": label,
                "method": method,
                "instances": n,
                "runs": len(runs),
                "inst_per_s": n / seconds,
                "mb_per_s": total / MB / seconds,
                "ratio_to_native": median(ratios) if ratios else None,
                "ratios": ratios,
                "cpu_ms_per_instance": {
                    p: median([r["cpu_s"].get(p, 0.0) for r in runs]) * 1000 / n for p in processes
                },
                "peak_rss_mb": max(r["peak_mb"] for r in runs),
                # The whole machine's (other users' work included), while it ran.
                "cores_busy": median([r.get("cores_busy", float("nan")) for r in runs]),
                "failed_attempts": sum(r.get("failed_attempts", 0) for r in runs),
                "ratios_to_peer_store": ratios_to_peer_store(measured, method),
            }
        )
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    headers = ["size", "method", "inst/s", "MB/s", "x native", "x peer-store", "CPU ms/inst",
               "peak RSS MB", "cores busy"]  # fmt: skip
    body = [
        [
            r["size"],
            r["method"],
            r["inst_per_s"],
            r["mb_per_s"],
            "-" if r["ratio_to_native"] is None else f"{r['ratio_to_native']:.2f}",
            _ratios(r.get("ratios_to_peer_store", [])),
            ", ".join(f"{p} {ms:.2f}" for p, ms in r["cpu_ms_per_instance"].items()),
            r["peak_rss_mb"],
            r["cores_busy"],
        ]
        for r in rows
    ]
    return table(headers, body)


def _ratios(ratios: list[float]) -> str:
    """The median and each run's ratio, as the README tables show them."""
    if not ratios:
        return "-"
    return f"{median(ratios):.2f} ({', '.join(f'{x:.2f}' for x in ratios)})"


async def compare(args: argparse.Namespace) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown method(s): {', '.join(sorted(unknown))}")
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    sizes = [size.strip() for size in args.sizes.split(",")]
    for label, (frames, n, quick_n) in SIZES.items():
        if label not in sizes:
            continue
        count = quick_n if args.quick else (args.instances or n)
        rows += await one_size(
            label, frames, count, args.runs, args.concurrency, methods, args.backlog,
            args.profile, args.sender_processes or None,
        )  # fmt: skip
    load_after = os.getloadavg()
    print()
    print(render(rows))
    print(
        f"\nload average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in load_before)};"
        f" after: {', '.join(f'{x:.2f}' for x in load_after)}"
    )
    document = {"rows": rows, "load_before": load_before, "load_after": load_after,
                "quick": args.quick, "concurrency": args.concurrency,
                "sender_processes": args.sender_processes or "auto"}  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(document, indent=2))
        print(f"JSON: {args.json}")
    else:
        print(json.dumps(document))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few instances, one run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--instances", type=int, default=0, help="per size (default: per size)")
    parser.add_argument("--concurrency", type=int, default=4, help="sendqueue associations")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--sizes", default=",".join(SIZES), help="of: " + ", ".join(SIZES))
    parser.add_argument(
        "--backlog",
        action="store_true",
        help="sendqueue legs: start the sender once every job is queued (its drain rate)",
    )
    parser.add_argument(
        "--sender-processes",
        type=int,
        default=0,
        help='sendqueue legs: [sender] processes (default: "auto")',
    )
    parser.add_argument("--json", default="", help="write the results here (else stdout)")
    parser.add_argument(
        "--profile", default="", help="HTTP-kind legs: py-spy collapsed stacks of the sender here"
    )
    args = parser.parse_args()
    if args.quick:
        args.runs = 1
    os.chdir(ROOT)
    return asyncio.run(compare(args))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
