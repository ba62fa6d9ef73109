"""The alert rules: valid for Prometheus, and unit-tested with promtool (each alert firing
and staying quiet). promtool is the Debian package prometheus's; without it these tests skip
locally and fail in CI."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

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
    assert f"SUCCESS: {len(assets.rules())} rules found" in output


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


def test_the_issue_s_alerts_are_all_there() -> None:
    expressions = {rule["alert"]: rule["expr"] for rule in assets.rules()}
    for alert, needle in (
        ("SendqueueDestinationDown", "sendqueue_destination_up"),
        ("SendqueueOldestJobTooOld", "sendqueue_oldest_waiting_seconds"),
        ("SendqueueJobsParked", "sendqueue_parked_items"),
        ("SendqueueQueueWithoutConsumer", "sendqueue_queue_consumers"),
        ("SendqueueIngestLagGrowing", "sendqueue_ingest_lag_changes"),
        ("SendqueueMetricsDown", "up{"),
    ):
        assert needle in expressions[alert], alert
    down = next(r for r in assets.rules() if r["alert"] == "SendqueueDestinationDown")
    assert down["for"] == "5m"


def test_every_alert_is_labelled_and_explained() -> None:
    for rule in assets.rules():
        assert rule["alert"].startswith("Sendqueue"), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]
