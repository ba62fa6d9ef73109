"""100,000 parked items: index rebuild, admin API latency, bulk requeue, and redelivery.

    .venv/bin/python bench/parked_100k.py                 # 100,000 items (10-20 minutes)
    .venv/bin/python bench/parked_100k.py --items 5000    # a quick run

1. `--distinct` (500) tiny instances (16x16) are uploaded to a source Orthanc.
2. The parking queue of a fresh vhost is filled directly (tests/integration/parked_factory)
   with --items parked jobs for destination "pacs", referencing those instances round-robin
   by their real Orthanc ids and SOPInstanceUIDs, so every job can be delivered. One job in
   ten has reason_class "unreachable", the others "dimse-a9xx".
3. The retry service starts as a `sendqueue retry` process. Its index (SQLite) is empty, so
   it rebuilds it with one pass over the parking queue: timed until GET /api/parked shows
   every item and no operation runs. GET latencies during the rebuild are kept too.
4. GET /api/parked latency, median of 20 calls each: first page (limit 100), a filter that
   matches 10% (destination + reason), a filter that matches 90%.
5. POST /api/parked/requeue {"destination": "pacs"} (synchronous) is timed, while
   GET /api/operations/current is polled every second for progress. The retry process's
   peak RSS (VmHWM, reset before the call) is read after it.
6. A `sendqueue sender` process starts against DCMTK storescp (`--fork --ignore`: receives
   and discards); timed until its sendqueue_jobs_sent_total counts every job.

Everything lives in one temp dir and one RabbitMQ vhost (sq-bench-*), removed at the end;
every process is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    ROOT,
    RssSampler,
    bench_vhost,
    check_alive,
    cpu_s,
    declare_topology_for,
    failures_by_class,
    median,
    queue_depth,
    reset_peak,
    status_mb,
    table,
    upload_many,
    wait_until,
)

DESTINATION = "pacs"
RARE_REASON = "unreachable"  # one item in ten
COMMON_REASON = "dimse-a9xx"
FILL_CHUNK = 10_000


class Admin:
    """The retry service's admin API over one keep-alive session, no client timeout."""

    def __init__(self, pipeline: Any) -> None:
        from tests.integration.harness import ADMIN_TOKEN

        self._pipeline = pipeline
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=aiohttp.ClientTimeout(total=None),
        )

    async def close(self) -> None:
        await self._session.close()

    async def call(self, method: str, path: str, body: Any = None) -> tuple[float, Any]:
        """(seconds, JSON answer); raises on a non-200 status."""
        started = time.monotonic()
        async with self._session.request(
            method, self._pipeline.url("retry", path), json=body
        ) as response:
            answer = await response.json(content_type=None)
            if response.status != 200:
                raise RuntimeError(f"{method} {path}: HTTP {response.status} {answer}")
        return time.monotonic() - started, answer

    async def latencies(self, path: str, calls: int = 20) -> tuple[list[float], Any]:
        times = []
        answer: Any = None
        for _ in range(calls):
            took, answer = await self.call("GET", path)
            times.append(took)
        return times, answer


def make_instances(source: Any, distinct: int) -> list[dict[str, str]]:
    from pydicom.uid import generate_uid

    from tests.support.dicom_factory import make_instance

    # str(): pydicom's UID is a str subclass that msgspec does not encode.
    studies = [str(generate_uid()) for _ in range(max(1, distinct // 50))]
    refs, blobs = [], []
    for i in range(distinct):
        uid, study = str(generate_uid()), studies[i % len(studies)]
        patient = f"P{i % 7}"
        blobs.append(
            make_instance(study, sop_uid=uid, patient_id=patient, rows=16, cols=16,
                          instance_number=i + 1)
        )  # fmt: skip
        refs.append({"sop_instance_uid": uid, "study_instance_uid": study, "patient_id": patient})
    for ref, orthanc_id in zip(refs, upload_many(source, blobs), strict=True):
        ref["orthanc_id"] = orthanc_id
    return refs


async def fill(amqp_url: str, items: int, refs: list[dict[str, str]]) -> float:
    from tests.integration.harness import PREFIX
    from tests.integration.parked_factory import fill_parked, parked_job

    started = time.monotonic()
    for start in range(0, items, FILL_CHUNK):
        jobs = [
            parked_job(
                i,
                DESTINATION,
                **refs[i % len(refs)],
                reason_class=RARE_REASON if i % 10 == 0 else COMMON_REASON,
                last_error=(
                    "association refused (test)" if i % 10 == 0 else "DIMSE status 0xA900 (test)"
                ),
            )
            for i in range(start, min(items, start + FILL_CHUNK))
        ]
        await fill_parked(amqp_url, PREFIX, jobs, window=500)
        print(f"  filled {start + len(jobs)}/{items}", flush=True)
    return time.monotonic() - started


async def bench(items: int, distinct: int, concurrency: int) -> dict[str, Any]:
    from tests.integration.harness import Pipeline, dicom_destination
    from tests.support.orthanc import OrthancProcess
    from tests.support.scp import StorescpProcess

    figures: dict[str, Any] = {"items": items, "distinct_instances": distinct}
    with tempfile.TemporaryDirectory(prefix="sq-bench-") as name, ExitStack() as stack:
        tmp = Path(name)
        source = stack.enter_context(OrthancProcess(aet="SOURCE", start_timeout=60))
        refs = make_instances(source, distinct)
        scp = stack.enter_context(
            StorescpProcess(output_dir=tmp / "storescp", extra_args=["--ignore"])
        )
        vhost = stack.enter_context(bench_vhost())
        pipeline = Pipeline(
            amqp_url=vhost.amqp_url,
            orthanc=source,
            tmp=tmp,
            destinations=[
                dicom_destination(DESTINATION, scp.port, scp.aet, concurrency=concurrency)
            ],
        )
        admin = Admin(pipeline)
        try:
            await declare_topology_for(pipeline.config)
            print(f"filling the parking queue with {items} jobs", flush=True)
            figures["fill_s"] = await fill(vhost.amqp_url, items, refs)
            figures["parked_queue_ready"] = await queue_depth(vhost.amqp_url, "sq.parked")
            await run_phases(pipeline, admin, items, figures)
        finally:
            await admin.close()
            await pipeline.stop()
    return figures


async def run_phases(pipeline: Any, admin: Admin, items: int, figures: dict[str, Any]) -> None:
    # -- 3. start-up and index rebuild -------------------------------------------------
    started = time.monotonic()
    retry = pipeline.spawn("retry")
    await pipeline.wait_healthy("retry", timeout=120)
    figures["retry_healthy_s"] = time.monotonic() - started
    figures["retry_rss_start_mb"] = status_mb(retry.pid, "VmRSS")
    cpu_start = cpu_s(retry.pid)
    with RssSampler(retry.pid) as rss:
        polls: list[float] = []
        progress: list[tuple[float, int]] = []

        async def rebuilt() -> bool:
            check_alive(pipeline, "retry")
            took, page = await admin.call("GET", "/api/parked?limit=100")
            _, operation = await admin.call("GET", "/api/operations/current")
            polls.append(took)
            progress.append((time.monotonic() - started, page["total"]))
            return bool(page["total"] >= items and not operation["running"])

        done = await wait_until(rebuilt, timeout=3600, interval=1.0, what="index rebuilt")
        figures["rebuild_s"] = done - started
        figures["retry_cpu_rebuild_s"] = cpu_s(retry.pid) - cpu_start
        figures["rebuild_first_full_s"] = next(t for t, n in progress if n >= items)
        figures["get_during_rebuild_median_s"] = median(polls)
        figures["get_during_rebuild_max_s"] = max(polls)
        figures["retry_peak_rebuild_mb"] = status_mb(retry.pid, "VmHWM")
        _print_progress("rebuild (s since spawn, total)", progress)

        # -- 4. listing latency ----------------------------------------------------------
        for key, path in (
            ("get_first_page", "/api/parked?limit=100"),
            ("get_filter_10pct", f"/api/parked?destination={DESTINATION}&reason={RARE_REASON}"
                                 "&limit=100"),
            ("get_filter_90pct", f"/api/parked?destination={DESTINATION}&reason={COMMON_REASON}"
                                 "&limit=100"),
        ):  # fmt: skip
            times, answer = await admin.latencies(path)
            figures[f"{key}_median_s"] = median(times)
            figures[f"{key}_max_s"] = max(times)
            figures[f"{key}_total"] = answer["total"]

        # -- 5. bulk requeue ---------------------------------------------------------------
        figures["retry_rss_before_requeue_mb"] = status_mb(retry.pid, "VmRSS")
        figures["hwm_reset"] = reset_peak(retry.pid)
        cpu_start = cpu_s(retry.pid)
        requeue_start = time.monotonic()
        call = asyncio.create_task(
            admin.call("POST", "/api/parked/requeue", {"destination": DESTINATION})
        )
        ops: list[tuple[float, int, int]] = []
        op_polls: list[float] = []
        while not call.done():
            await asyncio.wait({call}, timeout=1.0)
            if call.done():
                break
            took, operation = await admin.call("GET", "/api/operations/current")
            op_polls.append(took)
            ops.append((time.monotonic() - requeue_start, operation["done"], operation["total"]))
        took, answer = call.result()
        requeue_end = time.monotonic()
        figures["retry_cpu_requeue_s"] = cpu_s(retry.pid) - cpu_start
        figures["requeue_s"] = took
        figures["requeue_answer"] = answer
        figures["requeue_per_s"] = answer["requeued"] / took if took else 0.0
        figures["operations_poll_median_s"] = median(op_polls)
        figures["operations_poll_max_s"] = max(op_polls, default=0.0)
        figures["retry_peak_requeue_mb"] = (
            status_mb(retry.pid, "VmHWM")
            if figures["hwm_reset"]
            else rss.max_between(requeue_start, requeue_end)
        )
        figures["retry_rss_after_requeue_mb"] = status_mb(retry.pid, "VmRSS")
        _print_progress("requeue (s, done/total)", [(t, f"{d}/{n}") for t, d, n in ops])
    _, after = await admin.call("GET", "/api/parked?limit=1")
    figures["parked_after_requeue"] = after["total"]
    figures["work_queue_after_requeue"] = await queue_depth(
        pipeline.config.amqp.url, f"sq.work.{DESTINATION}"
    )

    # -- 6. delivery ------------------------------------------------------------------------
    started = time.monotonic()
    sender = pipeline.spawn("sender")
    await pipeline.wait_healthy("sender", timeout=120)
    cpu_at = {"sender": cpu_s(sender.pid), "retry": cpu_s(retry.pid)}
    sent_progress: list[tuple[float, int]] = []
    last_print = 0.0

    async def delivered() -> bool:
        nonlocal last_print
        check_alive(pipeline, "retry", "sender")
        sent = await pipeline.metric_sum("sender", "sendqueue_jobs_sent_total")
        now = time.monotonic() - started
        sent_progress.append((now, int(sent)))
        if now - last_print >= 30:
            last_print = now
            print(f"  sent {int(sent)}/{items} after {now:.0f} s", flush=True)
        return sent >= items

    done = await wait_until(delivered, timeout=7200, interval=1.0, what="all delivered")
    figures["deliver_s"] = done - started
    figures["deliver_per_s"] = items / figures["deliver_s"]
    figures["sender_peak_mb"] = status_mb(sender.pid, "VmHWM")
    figures["sender_cpu_ms_per_job"] = (cpu_s(sender.pid) - cpu_at["sender"]) * 1000 / items
    figures["retry_cpu_during_delivery_s"] = cpu_s(retry.pid) - cpu_at["retry"]
    figures["sender_failed_attempts"] = await pipeline.metric_sum(
        "sender", "sendqueue_jobs_failed_total"
    )
    figures["sender_failed_by_class"] = await failures_by_class(pipeline)
    figures["retry_peak_total_mb"] = status_mb(retry.pid, "VmHWM")
    _, after = await admin.call("GET", "/api/parked?limit=1")
    figures["parked_after_delivery"] = after["total"]


def _print_progress(title: str, points: list[tuple[float, Any]], shown: int = 12) -> None:
    step = max(1, len(points) // shown)
    picked = points[::step] + ([points[-1]] if points and (len(points) - 1) % step else [])
    print(f"  {title}: " + ", ".join(f"{t:.0f}s {v}" for t, v in picked), flush=True)


def report(f: dict[str, Any]) -> None:
    n = f["items"]
    rows: list[list[Any]] = [
        ["fill the parking queue (bench, publisher confirms)", f"{f['fill_s']:.1f} s",
         f"{n / f['fill_s']:.0f} items/s"],
        ["parking queue depth after the fill (AMQP)", str(f["parked_queue_ready"]), ""],
        ["retry start-up until /healthz", f"{f['retry_healthy_s']:.2f} s", ""],
        ["index rebuild: spawn until total = N, no operation", f"{f['rebuild_s']:.1f} s",
         f"{n / f['rebuild_s']:.0f} items/s, retry CPU {f['retry_cpu_rebuild_s']:.1f} s"],
        ["GET /api/parked during the rebuild", f"{f['get_during_rebuild_median_s']:.3f} s",
         f"max {f['get_during_rebuild_max_s']:.3f} s"],
        ["GET first page (limit 100), median of 20", f"{f['get_first_page_median_s']:.4f} s",
         f"max {f['get_first_page_max_s']:.4f} s, total {f['get_first_page_total']}"],
        ["GET destination+reason (10 %), median of 20",
         f"{f['get_filter_10pct_median_s']:.4f} s",
         f"max {f['get_filter_10pct_max_s']:.4f} s, total {f['get_filter_10pct_total']}"],
        ["GET destination+reason (90 %), median of 20",
         f"{f['get_filter_90pct_median_s']:.4f} s",
         f"max {f['get_filter_90pct_max_s']:.4f} s, total {f['get_filter_90pct_total']}"],
        ["POST requeue {destination} (synchronous)", f"{f['requeue_s']:.1f} s",
         f"{f['requeue_per_s']:.0f} items/s, retry CPU {f['retry_cpu_requeue_s']:.1f} s,"
         f" answer {f['requeue_answer']}"],
        ["GET /api/operations/current during requeue", f"{f['operations_poll_median_s']:.3f} s",
         f"max {f['operations_poll_max_s']:.3f} s"],
        ["retry RSS: start-up / peak rebuild", f"{f['retry_rss_start_mb']:.1f} MB",
         f"{f['retry_peak_rebuild_mb']:.1f} MB"],
        ["retry RSS: before requeue / peak requeue",
         f"{f['retry_rss_before_requeue_mb']:.1f} MB",
         f"{f['retry_peak_requeue_mb']:.1f} MB (after {f['retry_rss_after_requeue_mb']:.1f})"],
        ["after requeue: parked total / work queue", str(f["parked_after_requeue"]),
         str(f["work_queue_after_requeue"])],
        ["sender: spawn until sent_total = N", f"{f['deliver_s']:.1f} s",
         f"{f['deliver_per_s']:.0f} jobs/s, sender CPU {f['sender_cpu_ms_per_job']:.1f} ms/job"],
        ["sender peak RSS / failed attempts", f"{f['sender_peak_mb']:.1f} MB",
         f"{f['sender_failed_attempts']:.0f} {f['sender_failed_by_class'] or ''}"],
        ["parked after delivery", str(f["parked_after_delivery"]), ""],
    ]  # fmt: skip
    print()
    print(table(["measure", "figure", "detail"], rows))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--distinct", type=int, default=500, help="real instances referenced")
    parser.add_argument("--concurrency", type=int, default=4, help="sender associations")
    args = parser.parse_args()
    os.chdir(ROOT)
    figures = asyncio.run(bench(args.items, args.distinct, args.concurrency))
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                      for k, v in figures.items()}))  # fmt: skip
    report(figures)
    ok = (
        figures["get_first_page_median_s"] < 1.0
        and figures["requeue_answer"] == {"requeued": args.items, "failed": 0}
        and figures["parked_after_delivery"] == 0
    )
    print(f"\nfirst page < 1 s, all requeued, nothing parked again: {'OK' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
