"""Each way forwarding can stop, on a real Prometheus (Debian's) scraping the real services
and RabbitMQ: the alert named for the cause returns a result while it holds, and no other
alert does, not even pending (ALERTS over the whole scene), before and after it is fixed.

The Prometheus here scrapes and evaluates every second; the services probe Orthanc every
5 s (as in production). Each scene runs the whole stack in a vhost of its own, under the
default queue prefix that the broker-side rules name; RabbitMQ's per-queue metrics are
scraped for that vhost only (`vhost=` on /metrics/detailed), so other tests' queues on the
shared broker never reach these rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from sendqueue.services.cli.render import render_status
from sendqueue.shared.config import AmqpConfig
from tests.destinations.pki import make_pki, openssl_available
from tests.observability import assets
from tests.observability.prometheus import PrometheusProcess
from tests.observability.stack import (
    ADMIN_TOKEN,
    SERVICES,
    Stack,
    build_config,
    running,
    stack_settings,
)
from tests.support import rabbit
from tests.support.availability import unavailable
from tests.support.dicom_factory import make_study
from tests.support.orthanc import OrthancProcess
from tests.support.ports import free_port
from tests.support.scp import ScriptedSCP, always

pytestmark = pytest.mark.slow

#: The prefix whose queue names the rules select (docs/metrics.md, "Alerts").
PREFIX = AmqpConfig().prefix
BROKER = f"{urlsplit(rabbit.MGMT_URL).hostname}:15692"
#: From the moment a cause begins (or ends) to its alert's expression answering (or not).
ACCEPTANCE = 30.0
EXPRS = {rule["alert"]: rule["expr"] for rule in assets.rules()}


@dataclass
class Scene:
    stack: Stack
    prom: PrometheusProcess
    orthanc: OrthancProcess
    scp: ScriptedSCP
    #: time.time() when the cause began: ALERTS since then must name no other alert.
    since: float = 0.0

    async def upload(self, count: int) -> None:
        for data in make_study(count):
            await asyncio.to_thread(self.orthanc.upload, data)

    async def admin(self, method: str, path: str) -> Any:
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method,
                self.stack.url("retry", path),
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            ) as resp,
        ):
            resp.raise_for_status()
            return await resp.json()

    async def expression_returns(self, alert: str, since: float | None = None) -> list[Any]:
        """The alert's expression answers within ACCEPTANCE of `since` (time.monotonic()
        when the cause began; default now)."""
        left = ACCEPTANCE - (time.monotonic() - since if since is not None else 0.0)
        return await self.prom.wait_for(EXPRS[alert], timeout=max(left, 0.0), what=alert)

    async def expression_clears(self, alert: str, since: float | None = None) -> None:
        deadline = (since if since is not None else time.monotonic()) + ACCEPTANCE
        while await self.prom.query(EXPRS[alert]):
            assert time.monotonic() < deadline, f"{alert} still returns {ACCEPTANCE} s on"
            await asyncio.sleep(0.5)

    async def blamed(self) -> set[str]:
        """Alerts pending or firing at any evaluation since the cause began, or whose
        expression returns a result now."""
        # Whole seconds since then, rounded down: an evaluation before `since` is no part.
        window = max(1, math.floor(time.time() - self.since))
        seen = await self.prom.query(f"max_over_time(ALERTS[{window}s])")
        names = {sample["metric"]["alertname"] for sample in seen}
        for alert, expr in EXPRS.items():
            if await self.prom.query(expr):
                names.add(alert)
        return names

    async def only(self, *allowed: str) -> None:
        blamed = await self.blamed()
        assert blamed <= set(allowed), f"blamed besides {allowed}: {blamed - set(allowed)}"


def scene_settings(
    amqp_url: str, orthanc: OrthancProcess, scp: ScriptedSCP, workdir: Path
) -> dict[str, Any]:
    settings = stack_settings(amqp_url=amqp_url, orthanc=orthanc, scp=scp, workdir=workdir)
    settings["amqp"]["prefix"] = PREFIX
    return settings


def prometheus_for(stack: Stack, vhost: str) -> PrometheusProcess:
    jobs = {f"sendqueue-{name}": [stack.listen(name)] for name in SERVICES}
    jobs["rabbitmq"] = jobs["rabbitmq-detailed"] = [BROKER]
    detailed = {
        "metrics_path": "/metrics/detailed",
        "params": {"family": ["queue_coarse_metrics", "queue_consumer_count"], "vhost": [vhost]},
    }
    return PrometheusProcess(
        jobs=jobs, rule_files=[assets.RULES], job_options={"rabbitmq-detailed": detailed}
    )


@pytest.fixture
def require_prometheus() -> None:
    if not os.access(assets.PROMETHEUS, os.X_OK):
        unavailable(f"{assets.PROMETHEUS} is missing (Debian package prometheus)")


SceneFactory = Callable[..., contextlib.AbstractAsyncContextManager[Scene]]


@pytest.fixture
def make_scene(
    require_prometheus: None,
    rabbit_vhost: rabbit.RabbitVhost,
    orthanc: OrthancProcess,
    scp: ScriptedSCP,
) -> SceneFactory:
    """`async with make_scene(change=..., expected=...) as scene:` the stack (its settings
    changed by `change`), its Prometheus, and no alert pending or firing before the cause
    begins (but those `expected` from the start)."""

    @contextlib.asynccontextmanager
    async def scene(
        change: Callable[[dict[str, Any]], None] = lambda _s: None,
        expected: tuple[str, ...] = (),
    ) -> AsyncIterator[Scene]:
        with tempfile.TemporaryDirectory(prefix="sq-causes-") as workdir:
            settings = scene_settings(rabbit_vhost.amqp_url, orthanc, scp, Path(workdir))
            change(settings)
            async with (
                running(build_config(settings)) as stack,
                prometheus_for(stack, rabbit_vhost.name) as prom,
            ):
                made = Scene(stack, prom, orthanc, scp)
                await _quiet_start(made, expected)
                yield made

    return scene


async def _quiet_start(scene: Scene, expected: tuple[str, ...]) -> None:
    prom = scene.prom
    await prom.wait_for("count(up == 1) == 5", what="every target scraped")
    for queue in (f"{PREFIX}.work.pacs", f"{PREFIX}.failed"):
        # RabbitMQ publishes per-queue statistics every 5 s
        selector = f'rabbitmq_detailed_queue_consumers{{queue="{queue}"}} >= 1'
        await prom.wait_for(selector, what=f"the broker counts {queue}'s consumer")
    others = f'ALERTS{{alertname!~"{"|".join(expected)}"}}' if expected else "ALERTS"
    await prom.wait_for(f"absent({others})", what="no alert pending or firing at the start")
    scene.since = time.time()


async def _wait_state(scene: Scene, destination: str, state: str) -> dict[str, Any]:
    """GET /api/queues (what `sendqueue status` and the console show) until it says so."""
    deadline = time.monotonic() + ACCEPTANCE
    while True:
        queues: dict[str, Any] = await scene.admin("GET", "/api/queues")
        row = next(d for d in queues["destinations"] if d["name"] == destination)
        if row["state"] == state:
            return queues
        assert time.monotonic() < deadline, f"{destination} is {row['state']}, not {state}"
        await asyncio.sleep(0.3)


@contextlib.contextmanager
def _tmpfs(mountpoint: str, size: str = "8m") -> Iterator[None]:
    command = ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "sq-test-spool"]
    result = subprocess.run(
        [*command, mountpoint], capture_output=True, text=True, timeout=30, check=False
    )
    if result.returncode != 0:
        unavailable(f"cannot mount a tmpfs for the spool (needs root): {result.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", mountpoint], capture_output=True, timeout=30, check=False)


def _fill(path: Path, *, keep: float) -> None:
    """Write to path until only `keep` (a share) of its filesystem is free."""
    stats = os.statvfs(path.parent)
    size, free = stats.f_blocks * stats.f_frsize, stats.f_bavail * stats.f_frsize
    left = free - int(size * keep)
    chunk = b"\xa5" * (256 * 1024)  # data, not a hole: a sparse file would take no space
    with open(path, "wb") as out:
        while left > 0:
            left -= out.write(chunk[: min(len(chunk), left)])


# -- the scenes -----------------------------------------------------------------------------


async def test_orthanc_stopped_is_named_orthanc_and_no_destination_is_blamed(
    make_scene: SceneFactory,
) -> None:
    async with make_scene() as scene:
        # Given jobs for pacs waiting in its queue behind a slow PACS (not paused: a pause
        # would keep the no-consumer alert quiet for reasons of its own)
        scene.scp.store_delay = 2.0
        await scene.upload(10)
        await scene.prom.wait_for('sum(sendqueue_jobs_queued_total{destination="pacs"}) == 10')
        await scene.prom.wait_for('sendqueue_work_queue_ready{destination="pacs"} >= 6')
        scene.since, stopped = time.time(), time.monotonic()
        # When the source Orthanc stops
        await asyncio.to_thread(scene.orthanc.stop)
        # Then the Orthanc alert's expression answers within 30 s
        await scene.expression_returns("SendqueueOrthancDown", since=stopped)
        # ... the sender says source-down, in its metrics and to the operator ...
        state = 'sendqueue_destination_state{destination="pacs", state="source-down"} == 1'
        await scene.prom.wait_for(state)
        queues = await _wait_state(scene, "pacs", "source-down")
        assert "source-down" in render_status(queues)  # what `sendqueue status` prints
        # ... the broker sees jobs ready and no consumer, and still no alert blames one
        ready = f'rabbitmq_detailed_queue_messages_ready{{queue="{PREFIX}.work.pacs"}} > 0'
        none = f'rabbitmq_detailed_queue_consumers{{queue="{PREFIX}.work.pacs"}} == 0'
        await scene.prom.wait_for(f"{ready} and on (queue) {none}", what="jobs wait unconsumed")
        await scene.prom.wait_for('ALERTS{alertname="SendqueueOrthancDown"}')
        await asyncio.sleep(3)  # a few more evaluations
        await scene.only("SendqueueOrthancDown")
        # When Orthanc answers again, the alert's expression clears within 30 s
        scene.scp.store_delay = 0.0
        restarted = time.monotonic()
        await asyncio.to_thread(scene.orthanc.start)
        await scene.expression_clears("SendqueueOrthancDown", since=restarted)
        sent = 'sum(sendqueue_jobs_sent_total{destination="pacs"}) == 10'
        await scene.prom.wait_for(sent, what="every job delivered")
        await scene.only("SendqueueOrthancDown")


async def test_a_destination_down_is_named_for_the_destination(make_scene: SceneFactory) -> None:
    async with make_scene() as scene:
        # When the PACS stops answering while jobs arrive
        stopped = time.monotonic()
        await asyncio.to_thread(scene.scp.stop)
        await scene.upload(3)
        # Then its alert answers, naming it, while its queue fills with no consumer
        fired = await scene.expression_returns("SendqueueDestinationDown", since=stopped)
        assert [s["metric"]["destination"] for s in fired] == ["pacs"]
        ready = f'rabbitmq_detailed_queue_messages_ready{{queue="{PREFIX}.work.pacs"}} > 0'
        none = f'rabbitmq_detailed_queue_consumers{{queue="{PREFIX}.work.pacs"}} == 0'
        await scene.prom.wait_for(f"{ready} and on (queue) {none}", what="jobs wait unconsumed")
        await _wait_state(scene, "pacs", "down")
        await asyncio.sleep(3)
        await scene.only("SendqueueDestinationDown")
        # When it is back, everything is delivered and the alert clears
        back = time.monotonic()
        await asyncio.to_thread(scene.scp.start)
        await scene.expression_clears("SendqueueDestinationDown", since=back)
        await scene.prom.wait_for('sum(sendqueue_jobs_sent_total{destination="pacs"}) == 3')
        await scene.only("SendqueueDestinationDown")


async def test_the_retry_service_gone_is_named_retry(make_scene: SceneFactory) -> None:
    async with make_scene() as scene:
        # When the retry service stops (in-process, its parts close as a killed process's
        # would: its metrics endpoint and its RabbitMQ connections go away)
        stopped = time.monotonic()
        await scene.stack.stop("retry")
        # Then its alert answers, from its scrape and from the broker's count
        await scene.expression_returns("SendqueueRetryDown", since=stopped)
        failed = f'rabbitmq_detailed_queue_consumers{{queue="{PREFIX}.failed"}} == 0'
        await scene.prom.wait_for(failed, what="the broker sees no consumer of the failed queue")
        await asyncio.sleep(3)
        await scene.only("SendqueueRetryDown")
        # When it runs again, the alert clears
        back = time.monotonic()
        scene.stack.start("retry")
        await scene.stack.wait_healthy()
        await scene.expression_clears("SendqueueRetryDown", since=back)
        await scene.only("SendqueueRetryDown")


async def test_the_sender_gone_is_named_by_its_scrape_and_by_the_broker(
    make_scene: SceneFactory,
) -> None:
    async with make_scene() as scene:
        # When the only sender stops, its metrics with it, and jobs arrive
        stopped = time.monotonic()
        await scene.stack.stop("sender")
        await scene.upload(3)
        # Then its own alert answers, and the broker's count names the queue nobody reads
        await scene.expression_returns("SendqueueSenderDown", since=stopped)
        fired = await scene.expression_returns("SendqueueQueueWithoutConsumer", since=stopped)
        assert [(s["metric"]["queue"], s["metric"]["destination"]) for s in fired] == [
            (f"{PREFIX}.work.pacs", "pacs")
        ]
        await asyncio.sleep(3)
        await scene.only("SendqueueSenderDown", "SendqueueQueueWithoutConsumer")
        # When it runs again, it delivers them and both clear
        back = time.monotonic()
        scene.stack.start("sender")
        await scene.stack.wait_healthy()
        await scene.expression_clears("SendqueueSenderDown", since=back)
        await scene.expression_clears("SendqueueQueueWithoutConsumer", since=back)
        await scene.prom.wait_for('sum(sendqueue_jobs_sent_total{destination="pacs"}) == 3')
        await scene.only("SendqueueSenderDown", "SendqueueQueueWithoutConsumer")


async def test_jobs_parked_are_named_with_their_reason(make_scene: SceneFactory) -> None:
    async with make_scene() as scene:
        # When the PACS refuses every instance for good (0xC000: parked at once)
        scene.scp.status_for = always(0xC000)
        refused = time.monotonic()
        await scene.upload(1)
        await scene.prom.wait_for('sendqueue_jobs_failed_total{destination="pacs"} >= 1')
        await scene.upload(6)
        # Then the parking alert names the destination and the reason ...
        fired = await scene.expression_returns("SendqueueJobsParked", since=refused)
        assert [(s["metric"]["destination"], s["metric"]["reason"]) for s in fired] == [
            ("pacs", "dimse-cxxx")
        ]
        # ... and the failure-rate alert the class of failure; no alert blames anything else
        await scene.prom.wait_for('sum(sendqueue_jobs_parked_total{destination="pacs"}) == 7')
        fired = await scene.expression_returns("SendqueueFailureRateHigh", since=refused)
        assert [(s["metric"]["destination"], s["metric"]["class"]) for s in fired] == [
            ("pacs", "dimse-cxxx")
        ]
        await asyncio.sleep(3)
        await scene.only("SendqueueJobsParked", "SendqueueFailureRateHigh")
        # (both clear when their windows, 10 and 5 minutes, pass without more: promtool
        # tests that, grafana/alerts/sendqueue-rules.test.yml)


async def test_a_spool_disk_nearly_full_is_named_spool(make_scene: SceneFactory) -> None:
    # The spool is a tmpfs of 8 MiB mounted here, so filling it fills no shared disk; it is
    # unmounted in the end whatever happens.
    with tempfile.TemporaryDirectory(prefix="sq-spool-") as mountpoint, _tmpfs(mountpoint):

        def on_tmpfs(settings: dict[str, Any]) -> None:
            settings["sender"]["spool_dir"] = mountpoint

        async with make_scene(change=on_tmpfs) as scene:
            # When something else fills the spool's filesystem to 95 %
            filler, filled = Path(mountpoint) / "filler", time.monotonic()
            await asyncio.to_thread(_fill, filler, keep=0.05)
            # Then the spool alert answers, and no other
            await scene.expression_returns("SendqueueSpoolDiskFull", since=filled)
            await asyncio.sleep(3)
            await scene.only("SendqueueSpoolDiskFull")
            # When the space is freed, it clears
            freed = time.monotonic()
            filler.unlink()
            await scene.expression_clears("SendqueueSpoolDiskFull", since=freed)
            await scene.only("SendqueueSpoolDiskFull")


async def test_certificates_expiring_are_named_by_what_they_are_for(
    make_scene: SceneFactory, tmp_path: Path
) -> None:
    if not openssl_available():
        unavailable("openssl is not installed")
    # Given a DICOM TLS destination (no route sends to it) whose certificates, made here,
    # expire in 2 days
    pki = make_pki(tmp_path)

    def with_tls(settings: dict[str, Any]) -> None:
        settings["destinations"].append(
            {
                "name": "secure",
                "host": "127.0.0.1",
                "port": free_port(),
                "tls": {
                    "ca_file": str(pki.ca),
                    "cert_file": str(pki.client_cert),
                    "key_file": str(pki.client_key),
                },
            }
        )

    async with make_scene(change=with_tls, expected=("SendqueueCertificateExpiring",)) as scene:
        # Then the certificate alert answers for each of them, and no other alert
        fired = await scene.expression_returns("SendqueueCertificateExpiring")
        assert sorted((s["metric"]["cert"], s["metric"]["subject"]) for s in fired) == [
            ("destination/secure/ca", "sendqueue test ca"),
            ("destination/secure/client", "client"),
        ]
        assert all(s["metric"]["service"] == "sender" for s in fired)
        await asyncio.sleep(3)
        await scene.only("SendqueueCertificateExpiring")
        # When the files are renewed (400 days) and the sender restarted, as the runbook says
        renewed = make_pki(tmp_path / "renewed", days=400)
        for new, old in zip(
            (renewed.ca, renewed.client_cert, renewed.client_key),
            (pki.ca, pki.client_cert, pki.client_key),
            strict=True,
        ):
            shutil.copyfile(new, old)
        restarted = time.monotonic()
        await scene.stack.stop("sender")
        scene.stack.start("sender")
        await scene.stack.wait_healthy()
        # Then it clears (the restart itself is seen as a sender down for a scrape or two)
        await scene.expression_clears("SendqueueCertificateExpiring", since=restarted)
        await scene.prom.wait_for('up{job="sendqueue-sender"} == 1')
        await scene.prom.wait_for('absent(ALERTS{alertname="SendqueueSenderDown"})')
        scene.since = time.time()
        await asyncio.sleep(2)
        await scene.only()
