"""The dashboard and Grafana provisioning files are in the shape Grafana provisions as-is.

Grafana is not installable here, so these are schema checks of the file-provisioning format:
a dashboard file is the bare dashboard model (no {"dashboard": ...} wrapper).
"""

from __future__ import annotations

import re
from itertools import combinations
from typing import Any

import pytest

from tests.observability import assets

PANEL_TYPES = {"timeseries", "state-timeline", "stat", "gauge", "bargauge", "table", "text"}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return assets.load_dashboard()


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in assets.all_panels(dashboard) if p["type"] != "row"]


def test_the_dashboard_is_a_bare_model_with_a_fixed_uid(dashboard: dict[str, Any]) -> None:
    assert "dashboard" not in dashboard, "file provisioning takes the model itself"
    assert dashboard["uid"] == "sendqueue"
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert dashboard.get("id") is None, "a provisioned dashboard must not carry a database id"
    assert isinstance(dashboard["panels"], list) and dashboard["panels"]


def test_every_panel_has_a_datasource_targets_and_a_place(dashboard: dict[str, Any]) -> None:
    for panel in panels(dashboard):
        where = f"panel {panel.get('id')} {panel.get('title')!r}"
        assert panel["type"] in PANEL_TYPES, where
        assert panel["title"], where
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        assert panel["targets"], where
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), where
        for target in panel["targets"]:
            assert target["expr"].strip(), where
            assert target["datasource"] == panel["datasource"], where
        _check_grid(panel["gridPos"], where)


def test_rows_are_full_width_and_hold_no_hidden_panels(dashboard: dict[str, Any]) -> None:
    rows = [p for p in dashboard["panels"] if p["type"] == "row"]
    assert rows
    for row in rows:
        assert row["gridPos"]["w"] == 24 and row["gridPos"]["h"] == 1, row["title"]
        assert row.get("collapsed") or row.get("panels") == [], row["title"]


def _check_grid(grid: dict[str, Any], where: str) -> None:
    for key in ("h", "w", "x", "y"):
        assert isinstance(grid[key], int) and grid[key] >= 0, where
    assert grid["w"] > 0 and grid["h"] > 0, where
    assert grid["x"] + grid["w"] <= 24, f"{where} is wider than the 24-column grid"


def test_panel_ids_are_unique_and_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    every = dashboard["panels"]
    ids = [p["id"] for p in assets.all_panels(dashboard)]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for a, b in combinations(every, 2):
        assert not _overlap(a["gridPos"], b["gridPos"]), f"{a['title']!r} overlaps {b['title']!r}"


def _overlap(a: dict[str, int], b: dict[str, int]) -> bool:
    return (
        a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    )


def test_variables_used_are_defined_and_default_to_the_provisioned_datasource(
    dashboard: dict[str, Any],
) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    text = " ".join(assets.dashboard_queries(dashboard))
    used = set(re.findall(r"\$\{?([A-Za-z]\w*)", text)) - {"__rate_interval", "__interval"}
    assert used <= set(variables), f"undefined variables: {used - set(variables)}"
    source = variables["datasource"]
    assert source["type"] == "datasource" and source["query"] == "prometheus"
    assert source["current"]["value"] == _provisioned_datasource()["uid"]


def test_the_dashboard_covers_what_the_issue_asks_for(dashboard: dict[str, Any]) -> None:
    text = " ".join(assets.dashboard_queries(dashboard))
    for needle in (
        "sendqueue_jobs_sent_total",  # throughput
        "sendqueue_jobs_failed_total",  # outcomes
        'sendqueue_queue_messages{kind="work"',  # queue depth per destination
        "sendqueue_oldest_waiting_seconds",  # oldest age per destination
        "sendqueue_jobs_retried_total",  # retries by tier
        "sum by (reason) (increase(sendqueue_jobs_parked_total",  # parked by reason
        "histogram_quantile(0.95",  # latency percentiles
        "sendqueue_destination_up",  # up/down
        "sendqueue_ingest_lag_changes",  # ingest lag
        "sendqueue_orthanc_up",  # the source's health
        'state="source-down"',  # a destination waiting for the source
        "sendqueue_spool_filesystem_free_bytes",  # spool disk
        "sendqueue_tls_cert_expiry_timestamp_seconds",  # certificates
        "rabbitmq_detailed_queue_consumers",  # consumers by the broker's count
    ):
        assert needle in text, needle


def _provisioned_datasource() -> dict[str, Any]:
    config = assets.load_yaml(assets.GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    assert config["apiVersion"] == 1
    (source,) = config["datasources"]
    return dict(source)


def test_the_datasource_provisioning_file_is_valid() -> None:
    source = _provisioned_datasource()
    assert source["type"] == "prometheus"
    assert source["access"] == "proxy"
    assert source["url"].startswith("http://")
    assert source["uid"] and source["name"]


def test_the_dashboard_provider_reads_the_mounted_dashboards_directory() -> None:
    config = assets.load_yaml(assets.GRAFANA / "provisioning" / "dashboards" / "sendqueue.yml")
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    assert provider["name"] and provider["orgId"] == 1
    compose = assets.load_yaml(assets.COMPOSE / "docker-compose.yml")
    mounts = dict(assets.bind_mounts(compose["services"]["grafana"]))
    assert mounts["../grafana/dashboards"] == provider["options"]["path"]
    assert mounts["../grafana/provisioning"] == "/etc/grafana/provisioning"
