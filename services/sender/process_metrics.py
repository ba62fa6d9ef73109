"""Several sender processes' metrics as one page, each sample labelled by its process.

Prometheus scrapes one address per service; the supervisor of the sender processes
(services/sender/processes.py) answers it with every child's metrics. A `process` label
keeps their series apart: a counter of one process is not another's, and the dashboard
and the alert rules aggregate per destination over it as over several sender hosts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

LABEL = "process"


def merge_expositions(pages: Mapping[str, str], own: CollectorRegistry) -> bytes:
    """Prometheus text of the `own` registry's metrics, then those of `pages` (process
    label -> a child's /metrics text), each family once, with every child's samples."""
    merged: dict[str, Metric] = {}
    for process, text in pages.items():
        for family in text_string_to_metric_families(text):
            into = merged.get(family.name)
            if into is None:
                into = merged[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            for sample in family.samples:
                into.samples.append(sample._replace(labels={**sample.labels, LABEL: process}))
    page = CollectorRegistry(auto_describe=False)
    page.register(_Fixed(merged.values()))
    return generate_latest(own) + generate_latest(page)


class _Fixed(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families
