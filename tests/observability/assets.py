"""The observability files under test, and the metric names their queries use."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.support.availability import unavailable

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "grafana"
COMPOSE = ROOT / "compose"
DASHBOARD = GRAFANA / "dashboards" / "sendqueue.json"
RULES = GRAFANA / "alerts" / "sendqueue-rules.yml"
RULE_TESTS = GRAFANA / "alerts" / "sendqueue-rules.test.yml"
METRICS_DOC = ROOT / "docs" / "metrics.md"
PROMTOOL = "/usr/bin/promtool"
PROMETHEUS = "/usr/bin/prometheus"

#: Series Prometheus makes itself, not any exporter.
SYNTHETIC = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE"})
#: Metrics a rule already uses whose exporter is another change still under way, and
#: which one. test_metric_names checks that none of them is exported yet: once one is,
#: its entry goes, and the usual checks (exported, documented) apply to it.
PENDING: dict[str, str] = {}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_TYPE_LINE = re.compile(r"^# TYPE (\S+) (\S+)$", re.M)
_DOC_ROW = re.compile(r"^\| `((?:sendqueue|rabbitmq)_[a-z0-9_]+)` \| [a-z]+ \| ([^|]*) \|", re.M)
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
}


def load_yaml(path: Path) -> Any:
    try:
        import yaml
    except ImportError:
        unavailable("PyYAML is not installed (the dev extra needs pyyaml)")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression (or label_values() query) selects."""
    bare = _STRING.sub('""', expr)  # label values and regexes are not metric names
    return {
        name
        for name in _IDENT.findall(bare)
        if name.startswith(("sendqueue_", "rabbitmq_")) or name in SYNTHETIC
    }


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL the dashboard runs: panel targets and template variable queries."""
    queries = [t["expr"] for p in all_panels(dashboard) for t in p.get("targets", [])]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Top-level panels plus those inside collapsed rows."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def all_rules() -> list[dict[str, Any]]:
    """Every rule of the rule file: recording rules and alerts, in file order."""
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


def rules() -> list[dict[str, Any]]:
    """The alerting rules."""
    return [rule for rule in all_rules() if "alert" in rule]


def used_metric_names() -> dict[str, set[str]]:
    """Metric name -> where it is used ("dashboard", "rules")."""
    used: dict[str, set[str]] = {}
    for query in dashboard_queries(load_dashboard()):
        for name in metric_names(query):
            used.setdefault(name, set()).add("dashboard")
    for rule in all_rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, set()).add("rules")
    return used


def github_anchor(heading: str) -> str:
    """The anchor GitHub (and most Markdown renderers) give a heading: lower case, spaces
    to hyphens, punctuation other than hyphens and underscores dropped."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def doc_anchors(path: Path) -> set[str]:
    """Anchors of the Markdown headings of a document (code blocks skipped)."""
    anchors, fenced = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"#{1,6} (.+)", line)):
            anchors.add(github_anchor(match.group(1).replace("`", "")))
    return anchors


def exported_families(exposition: str) -> dict[str, str]:
    """Family name -> type, from the `# TYPE` lines of a text exposition.

    prometheus-client writes HELP and TYPE for a labelled metric before its first sample, so
    a metric counts as exported as soon as a service declares it. Counters are named with
    their `_total` suffix there, as in queries. The `<name>_created` gauges prometheus-client
    writes as families of their own belong to their counter or histogram and are left out.
    """
    kinds = dict(_TYPE_LINE.findall(exposition))
    owners = {name.removesuffix("_total") for name in kinds}
    return {
        name: kind
        for name, kind in kinds.items()
        if not (name.endswith("_created") and name.removesuffix("_created") in owners)
    }


def exported_series(exposition: str) -> set[str]:
    """Every series name the exposition's families can produce (_bucket, _created, ...)."""
    names: set[str] = set()
    for family, kind in exported_families(exposition).items():
        base = family.removesuffix("_total") if kind == "counter" else family
        names.update(base + suffix for suffix in _SUFFIXES.get(kind, ("",)))
    return names


def sample_labels(exposition: str) -> dict[str, set[str]]:
    """Family name (as in TYPE lines) -> label names seen on its samples ("le" excluded)."""
    labels: dict[str, set[str]] = {}
    kinds = exported_families(exposition)
    for family in text_string_to_metric_families(exposition):
        name = family.name + "_total" if family.type == "counter" else family.name
        if name not in kinds or not family.samples:
            continue
        seen = {key for sample in family.samples for key in sample.labels} - {"le"}
        labels.setdefault(name, set()).update(seen)
    return labels


def documented_labels() -> dict[str, set[str]]:
    """Metric name -> its label names, from docs/metrics.md's tables."""
    text = METRICS_DOC.read_text(encoding="utf-8")
    found: dict[str, set[str]] = {}
    for name, labels in _DOC_ROW.findall(text):
        found[name] = set(re.findall(r"`([a-z_]+)`", labels))
    return found


def documented_metrics() -> set[str]:
    """Metric names in the first column of docs/metrics.md's tables."""
    return set(documented_labels())


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of a compose service's bind mounts (short syntax)."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("."):
            mounts.append((source, target))
    return mounts
