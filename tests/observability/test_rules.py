"""The alert rules: valid for Prometheus, and unit-tested with promtool (each alert firing
and staying quiet). promtool is the Debian package prometheus's; without it these tests skip
locally and fail in CI."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from sendqueue.shared.config import AmqpConfig
from sendqueue.shared.topology import Names
from tests.observability import assets
from tests.support.availability import unavailable


@pytest.fixture(scope="module")
def promtool() -> str:
    if not os.access(assets.PROMTOOL, os.X_OK):
        unavailable(f"{assets.PROMTOOL} is missing (Debian package prometheus)")
    return assets.PROMTOOL


def _run(promtool: str, *args: str, cwd: Path) -> str:
    result = subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_promtool_checks_the_rule_file(promtool: str) -> None:
    output = _run(promtool, "check", "rules", assets.RULES.name, cwd=assets.RULES.parent)
    assert f"SUCCESS: {len(assets.all_rules())} rules found" in output


def test_promtool_unit_tests_of_the_rules_pass(promtool: str) -> None:
    output = _run(promtool, "test", "rules", assets.RULE_TESTS.name, cwd=assets.RULES.parent)
    assert "SUCCESS" in output


def test_promtool_checks_the_compose_prometheus_config_as_mounted(promtool: str) -> None:
    # Rebuild the container's file layout from the compose mounts, so that the config's
    # relative rule_files path resolves as it will inside the container.
    compose = assets.load_yaml(assets.COMPOSE / "docker-compose.yml")
    mounts = assets.bind_mounts(compose["services"]["prometheus"])
    with tempfile.TemporaryDirectory(prefix="sq-promcfg-") as root:
        for source, target in mounts:
            copy = Path(root) / target.lstrip("/")
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(assets.COMPOSE / source, copy)
        config = Path(root) / "etc" / "prometheus" / "prometheus.yml"
        output = _run(promtool, "check", "config", str(config), cwd=Path(root))
    assert "SUCCESS: 1 rule files found" in output


def _alert_cases() -> dict[str, dict[str, int]]:
    """Alert name -> number of promtool cases expecting it to fire and to stay quiet."""
    cases: dict[str, dict[str, int]] = {}
    for test in assets.load_yaml(assets.RULE_TESTS)["tests"]:
        for case in test.get("alert_rule_test", []):
            counts = cases.setdefault(case["alertname"], {"firing": 0, "quiet": 0})
            counts["firing" if case.get("exp_alerts") else "quiet"] += 1
    return cases


def test_every_alert_is_tested_firing_and_quiet() -> None:
    cases = _alert_cases()
    for rule in assets.rules():
        counts = cases.get(rule["alert"], {"firing": 0, "quiet": 0})
        assert counts["firing"] and counts["quiet"], f"{rule['alert']}: {counts}"


#: Each way forwarding can stop, the alert that names it, and a metric its expression
#: must read: the cause, not a symptom another cause could also produce.
CAUSES = {
    "SendqueueOrthancDown": "sendqueue_orthanc_up",
    "SendqueueDestinationDown": "sendqueue_destination_up",
    "SendqueueOldestJobTooOld": "sendqueue_oldest_waiting_seconds",
    "SendqueueFailureRateHigh": "sendqueue_jobs_failed_total",
    "SendqueueJobsParked": "sendqueue:jobs_parked:increase10m",
    "SendqueueJobCrashLooping": 'reason="delivery-limit"',
    "SendqueueQueueWithoutConsumer": "rabbitmq_detailed_queue_consumers",
    "SendqueueIngestDown": 'up{job="sendqueue-ingest"}',
    "SendqueueSenderDown": 'up{job="sendqueue-sender"}',
    "SendqueueRetryDown": 'up{job="sendqueue-retry"}',
    "SendqueueRabbitMQDown": 'up{job=~"rabbitmq.*"}',
    "SendqueueIngestLagGrowing": "sendqueue_ingest_lag_changes",
    "SendqueueIngestFailing": "sendqueue_ingest_errors_total",
    "SendqueueSpoolDiskFull": "sendqueue_spool_filesystem_free_bytes",
    "SendqueueCertificateExpiring": "sendqueue_tls_cert_expiry_timestamp_seconds",
    "SendqueueOrthancJobHistoryOverflow": "sendqueue_orthanc_jobs_missed_total",
    "SendqueueBrokerAlarm": "rabbitmq_alarms_memory_used_watermark",
    "SendqueueQueueStatsStale": "sendqueue_queue_stats_timestamp_seconds",
}


def test_every_cause_has_its_alert_and_every_alert_a_cause() -> None:
    expressions = {rule["alert"]: rule["expr"] for rule in assets.rules()}
    assert sorted(expressions) == sorted(CAUSES)
    for alert, needle in CAUSES.items():
        assert needle in expressions[alert], alert
    down = next(r for r in assets.rules() if r["alert"] == "SendqueueDestinationDown")
    assert down["for"] == "5m"


def test_parked_jobs_are_counted_from_the_counter_not_the_gauge() -> None:
    # A requeue or delete lowers the parked_items gauge and can hide a newly parked job.
    (record,) = [r for r in assets.all_rules() if r.get("record")]
    assert "increase(sendqueue_jobs_parked_total[10m])" in record["expr"]
    every = " ".join(rule["expr"] for rule in assets.all_rules())
    assert "sendqueue_parked_items" not in every


def test_broker_side_rules_select_the_queues_of_the_default_prefix() -> None:
    # The rules name sendqueue's queues literally (docs/metrics.md: change them along with
    # [amqp] prefix): they must match the names the default prefix gives, and only those.
    ours, other = Names(AmqpConfig().prefix), Names("billing")
    names = [ours.work_queue("pacs"), ours.failed_queue]
    broker = [r for r in assets.rules() if "rabbitmq_detailed_" in r["expr"]]
    assert broker
    for rule in broker:
        selectors = re.findall(r'queue(=~?)"([^"]+)"', rule["expr"])
        assert selectors, rule["alert"]
        for operator, value in selectors:
            pattern = value.replace("\\\\", "\\") if operator == "=~" else re.escape(value)
            assert any(re.fullmatch(pattern, name) for name in names), (rule["alert"], value)
            assert not re.fullmatch(pattern, other.work_queue("pacs")), (rule["alert"], value)
            assert not re.fullmatch(pattern, other.failed_queue), (rule["alert"], value)


def test_every_alert_links_its_runbook_in_docs_operations() -> None:
    anchors = assets.doc_anchors(assets.ROOT / "docs" / "operations.md")
    for rule in assets.rules():
        url = rule["annotations"].get("runbook_url", "")
        path, _, anchor = url.partition("#")
        assert path == "docs/operations.md", (rule["alert"], url)
        assert anchor == rule["alert"].lower(), (rule["alert"], url)
        assert anchor in anchors, f"{rule['alert']}: no heading for #{anchor} in {path}"


def test_every_alert_is_labelled_and_explained() -> None:
    for rule in assets.rules():
        assert rule["alert"].startswith("Sendqueue"), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]
