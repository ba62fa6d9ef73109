"""Runs one scenario end to end and reckons its ledger; used by the tests and by bench/.

It owns everything it starts (vhost, Orthanc, peer, proxy, tmpfs, services, temp dir) and
stops or removes it in reverse order, whatever happens. A scenario that disturbs the broker
holds the exclusive broker lock for its whole run; the others hold the shared one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import shutil
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

from tests.faults.ledger import Figures, drain_vhost, failed_attempts, reckon
from tests.faults.proxy import FaultyProxy
from tests.faults.scenarios import (
    BATCH_SIZE,
    CONCURRENCY,
    DIMSE_TIMEOUT,
    Scenario,
)
from tests.faults.spool_disk import small_tmpfs
from tests.faults.stage import SERVICES, Stage
from tests.faults.workload import Workload
from tests.integration.harness import Pipeline, dicom_destination, to_toml
from tests.support import rabbit
from tests.support.broker_lock import disturbing_broker, using_broker
from tests.support.orthanc import OrthancProcess
from tests.support.scp import ScriptedSCP

log = logging.getLogger(__name__)

#: The workload arrives across most of the fault's window, at no more than this rate
#: (instances/s), so large workloads stretch the window instead of piling up at once.
ARRIVAL_RATE = 60.0


class ScenarioFailed(AssertionError):
    """A scenario broke sendqueue's promise; subclasses say how."""


class Lost(ScenarioFailed):
    pass


class ServiceExited(ScenarioFailed):
    pass


class NotSettled(ScenarioFailed):
    """Instances neither delivered nor parked when the scenario's time was up."""


class ServiceHung(ScenarioFailed):
    """A service did not stop on SIGTERM."""


class UnplannedParking(ScenarioFailed):
    """Deliverable instances parked: the fault burned their attempts."""


class AttemptsBurned(ScenarioFailed):
    """Failed attempts for a fault that is no fault of the job (a local or source fault)."""


class TooManyDuplicates(ScenarioFailed):
    pass


def window_for(scenario: Scenario, instances: int) -> float:
    return max(scenario.window, instances / ARRIVAL_RATE / 0.8)


async def run_scenario(
    scenario: Scenario, *, instances: int, seed: int, settle: float | None = None
) -> tuple[Figures, list[str]]:
    """The scenario's figures and its timeline. `settle`: seconds allowed after the fault
    for everything to be delivered or parked."""
    workload = Workload(instances, large_every=scenario.large_every)
    window = window_for(scenario, instances)
    if settle is None:  # the CI workload's allowance, and 0.05 s per instance beyond it
        settle = (scenario.settle or 60.0) + max(0, instances - 500) / 20
    lock = disturbing_broker() if scenario.disturbs_broker else using_broker()
    async with AsyncExitStack() as stack:
        waited = time.monotonic()
        stack.enter_context(lock)
        waited = time.monotonic() - waited
        set_up = time.monotonic()
        stage = await _set_up(stack, scenario, workload, window, random.Random(seed))
        stage.note(f"set up in {time.monotonic() - set_up:.1f}s (broker lock: {waited:.1f}s)")
        started = time.monotonic()
        deadline = started + window + settle
        watcher = asyncio.create_task(stage.watch())
        upload = asyncio.create_task(workload.upload(stage.orthanc, window * 0.8, deadline))
        try:
            await scenario.fault(stage)
            stage.note("fault over")
            # A service restarted by the fault's last step must be up (its SIGTERM handler
            # installed) before the end of the run can judge how it stops.
            await stage.pipeline.wait_healthy(*SERVICES, timeout=120)
            await upload
            settled = await _wait_settled(stage, workload, deadline)
            stage.note("settled" if settled else "NOT settled by the deadline")
        finally:
            for task in (upload, watcher):
                task.cancel()
                # An upload's own error was raised above already (or the fault's was).
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            hung = await asyncio.to_thread(stage.stop_services)
            stage.note("services stopped")
        contents = await drain_vhost(stage.pipeline.config.amqp.url, stage.pipeline.vhost)
        stage.note("queues drained")
        _keep_logs(stage.pipeline.tmp, scenario.name)
        figures = reckon(
            scenario.name,
            workload.plans,
            list(stage.scp.received),
            contents,
            started=started,
            faults=dict(stage.faults),
            exited=tuple(f"{n} ({c})" for n, c in stage.exited),
            hung=tuple(f"{n} ({c})" for n, c in hung),
            failed_attempts=failed_attempts(_read(stage.pipeline.tmp / "sender.log")),
        )
        bound = scenario.duplicate_bound(figures.faults, instances)
        return replace(figures, duplicate_bound=bound), stage.timeline
    raise AssertionError("unreachable")  # pragma: no cover - the block returns or raises


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _keep_logs(tmp: Path, scenario: str) -> None:
    """SQ_FAULTS_KEEP_LOGS=DIR: the services' logs are copied to DIR/<scenario>/."""
    keep = os.environ.get("SQ_FAULTS_KEEP_LOGS")
    if keep:
        target = Path(keep) / scenario
        target.mkdir(parents=True, exist_ok=True)
        for log_file in tmp.glob("*.log"):
            shutil.copy(log_file, target / log_file.name)


async def _set_up(
    stack: AsyncExitStack,
    scenario: Scenario,
    workload: Workload,
    window: float,
    rng: random.Random,
) -> Stage:
    vhost = stack.enter_context(rabbit.temp_vhost())
    tmp = Path(tempfile.mkdtemp(prefix=f"sq-faults-{scenario.name}-"))
    stack.callback(shutil.rmtree, tmp, ignore_errors=True)
    orthanc = stack.enter_context(OrthancProcess())
    scp = stack.enter_context(ScriptedSCP(status_for=workload.status_for()))
    spool = tmp / "spool"
    if scenario.spool_tmpfs:
        stack.enter_context(small_tmpfs(spool))
    proxy = None
    if scenario.via_proxy:
        proxy = await FaultyProxy(scp.port).start()
        stack.push_async_callback(proxy.close)
    pipeline = Pipeline(
        amqp_url=vhost.amqp_url,
        orthanc=orthanc,
        tmp=tmp,
        destinations=[
            dicom_destination(
                "pacs",
                proxy.port if proxy else scp.port,
                scp.aet,
                concurrency=CONCURRENCY,
                dimse_timeout=DIMSE_TIMEOUT,
                acse_timeout="10s",
                **scenario.destination,
            )
        ],
        retry={"delays": ["500ms", "1s", "2s"], "max_attempts": 6},
        ingest={"batch_size": BATCH_SIZE},
    )
    pipeline.data["sender"]["spool_dir"] = str(spool)
    if scenario.spool_tmpfs:
        # The scenario fills the spool: every instance must go through it, not through
        # memory (instances up to in_memory_mb otherwise never touch the disk).
        pipeline.data["sender"]["in_memory_mb"] = 0
    pipeline.config_path.write_text(to_toml(pipeline.data))
    stack.push_async_callback(_stop_pipeline, pipeline)
    stage = Stage(
        pipeline=pipeline,
        orthanc=orthanc,
        scp=scp,
        proxy=proxy,
        spool=spool,
        rng=rng,
        window=window,
    )
    await stage.start_services()
    return stage


async def _stop_pipeline(pipeline: Pipeline) -> None:
    with contextlib.suppress(Exception):
        await pipeline.stop(timeout=30)


async def _wait_settled(stage: Stage, workload: Workload, deadline: float) -> bool:
    """Until every instance is at the destination or listed as parked, or the deadline."""
    everything = workload.uids()
    while time.monotonic() < deadline:
        missing = everything - stage.scp.stored_uids()
        if not missing:
            return True
        parked = await stage.parked_uids()
        if parked is not None and missing <= parked:
            return True
        await asyncio.sleep(1.0)
    return False


def check(figures: Figures, scenario: Scenario) -> None:
    """Raise the gravest broken promise of the run, if any."""
    f = figures
    if f.lost:
        raise Lost(f"{f.lost} of {f.instances} instances lost, e.g. {f.lost_uids}: {f}")
    if f.exited:
        raise ServiceExited(f"services exited by themselves: {f.exited}: {f}")
    if f.waiting or f.parked_without_reason:
        raise NotSettled(
            f"{f.waiting} instances still queued, {f.parked_without_reason} parked without"
            f" a reason when the scenario's time was up: {f}"
        )
    if f.hung:
        raise ServiceHung(f"did not stop on SIGTERM: {f.hung}: {f}")
    if f.parked_unplanned:
        raise UnplannedParking(
            f"{f.parked_unplanned} deliverable instances parked ({f.parked_reasons}): {f}"
        )
    if scenario.burns_no_attempts and f.unplanned_attempts:
        raise AttemptsBurned(
            f"{f.unplanned_attempts} failed attempts for the fault ({f.failed_attempts}): {f}"
        )
    if f.duplicates > f.duplicate_bound:
        raise TooManyDuplicates(
            f"{f.duplicates} duplicates, more than the bound {f.duplicate_bound}"
            f" ({scenario.why}): {f}"
        )
