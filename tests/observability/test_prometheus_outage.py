"""A real Prometheus scrapes the running services through a destination outage.

It must see the work queue's depth rise, the destination-down gauge flip, the alert rule's
expression return the destination (and the alert go pending), then everything recover.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.observability import assets
from tests.observability.prometheus import PrometheusProcess
from tests.observability.stack import SERVICES, Stack, build_config, running, stack_settings
from tests.support import rabbit
from tests.support.availability import unavailable
from tests.support.dicom_factory import make_study
from tests.support.orthanc import OrthancProcess
from tests.support.scp import ScriptedSCP

pytestmark = pytest.mark.slow

WORK_READY = 'sendqueue_queue_messages{kind="work", destination="pacs", state="ready"}'
#: Grafana's macros and the dashboard's variables, as Grafana would expand them.
GRAFANA_EXPANSIONS = {"$__rate_interval": "1m", "$__interval": "15s", "$destination": ".*"}


@pytest.fixture
def require_prometheus() -> None:
    if not os.access(assets.PROMETHEUS, os.X_OK):
        unavailable(f"{assets.PROMETHEUS} is missing (Debian package prometheus)")


@pytest.fixture
async def stack(amqp_url: str, orthanc: OrthancProcess, scp: ScriptedSCP) -> AsyncIterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="sq-obs-") as workdir:
        settings = stack_settings(
            amqp_url=amqp_url, orthanc=orthanc, scp=scp, workdir=Path(workdir)
        )
        async with running(build_config(settings)) as running_stack:
            yield running_stack


@pytest.fixture
async def prometheus(require_prometheus: None, stack: Stack) -> AsyncIterator[PrometheusProcess]:
    jobs = {f"sendqueue-{name}": [stack.listen(name)] for name in SERVICES}
    jobs["rabbitmq"] = [f"{urlsplit(rabbit.MGMT_URL).hostname}:15692"]
    async with PrometheusProcess(jobs=jobs, rule_files=[assets.RULES]) as server:
        yield server


def _alert_expr(name: str) -> str:
    return next(rule["expr"] for rule in assets.rules() if rule["alert"] == name)


def _value(samples: list[dict[str, object]]) -> float:
    (sample,) = samples
    value = sample["value"]
    assert isinstance(value, list)
    return float(value[1])


async def _upload(orthanc: OrthancProcess, count: int) -> None:
    for data in make_study(count):
        await asyncio.to_thread(orthanc.upload, data)


async def test_an_outage_shows_in_prometheus_and_its_alert_expression_fires(
    prometheus: PrometheusProcess, orthanc: OrthancProcess, scp: ScriptedSCP
) -> None:
    # Given every service scraped and two jobs delivered
    await prometheus.wait_for('count(up{job=~"sendqueue-.+"} == 1) == 3', what="3 targets up")
    await _upload(orthanc, 2)
    await prometheus.wait_for('sum(sendqueue_jobs_sent_total{destination="pacs"}) == 2')
    await prometheus.wait_for(f"{WORK_READY} == 0", what="work queue statistics")
    assert await prometheus.query(_alert_expr("SendqueueDestinationDown")) == []

    # When the destination goes away and five more jobs arrive
    await asyncio.to_thread(scp.stop)
    await _upload(orthanc, 5)

    # Then the destination flips to down, its queue fills, and the alert's expression fires
    await prometheus.wait_for('sendqueue_destination_up{destination="pacs"} == 0')
    depth = await prometheus.wait_for(f"{WORK_READY} >= 5", what="work queue depth rising")
    assert _value(depth) == 5
    fired = await prometheus.wait_for(_alert_expr("SendqueueDestinationDown"))
    assert [s["metric"]["destination"] for s in fired] == ["pacs"]
    pending = 'ALERTS{alertname="SendqueueDestinationDown", alertstate="pending"}'
    await prometheus.wait_for(pending, what="the alert pending (for: 5m)")
    await prometheus.wait_for('sendqueue_oldest_waiting_seconds{destination="pacs"} > 0')
    # ... and its consumer is cancelled while it is down (that no other alert blames the
    # missing consumer is test_alert_causes.py's, with RabbitMQ's own counts scraped)
    await prometheus.wait_for('sendqueue_queue_consumers{kind="work", destination="pacs"} == 0')

    # When it comes back, everything drains and the alert's expression is quiet again
    await asyncio.to_thread(scp.start)
    await prometheus.wait_for('sendqueue_destination_up{destination="pacs"} == 1')
    await prometheus.wait_for('sum(sendqueue_jobs_sent_total{destination="pacs"}) == 7')
    await prometheus.wait_for(f"{WORK_READY} == 0", what="work queue drained")
    assert await prometheus.query(_alert_expr("SendqueueDestinationDown")) == []


async def test_prometheus_evaluates_every_rule_and_dashboard_query(
    prometheus: PrometheusProcess,
) -> None:
    await prometheus.wait_for('count(up{job=~"sendqueue-.+"} == 1) == 3', what="3 targets up")
    await asyncio.sleep(2)  # a couple of rule evaluations
    groups = (await prometheus.api("rules"))["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == len(assets.all_rules())
    assert [r["name"] for r in rules if r["health"] != "ok"] == [], rules
    for query in assets.dashboard_queries(assets.load_dashboard()):
        expr = _expand(query)
        if expr.startswith("label_values("):
            metric = re.match(r"label_values\((\w+),", expr)
            assert metric, expr
            expr = metric.group(1)
        await prometheus.query(expr)  # a syntax error fails the assertion in query()


def _expand(query: str) -> str:
    for macro, value in GRAFANA_EXPANSIONS.items():
        query = query.replace(macro, value)
    return query
