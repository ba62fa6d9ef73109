"""Every metric the dashboard and the alert rules use is exported, and every export documented.

The services run against real RabbitMQ, Orthanc and a DICOM peer, once for the whole module:
a few jobs go through (one delivered, one retried, one parked) so that most metrics have
samples whose labels can be compared with docs/metrics.md.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from tests.destinations.pki import Pki, make_pki
from tests.observability import assets
from tests.observability.stack import SERVICES, Stack, build_config, running, stack_settings
from tests.support import rabbit
from tests.support.availability import unavailable
from tests.support.dicom_factory import make_study, sop_instance_uid
from tests.support.orthanc import OrthancProcess, orthanc_available
from tests.support.ports import free_port
from tests.support.scp import ScriptedSCP

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

RABBIT_PROMETHEUS = f"http://{urlsplit(rabbit.MGMT_URL).hostname}:15692"
RABBIT_PATHS = (
    "/metrics",
    "/metrics/detailed?family=queue_coarse_metrics&family=queue_consumer_count",
)
#: The label the sender's supervisor adds to its processes' metrics (docs/metrics.md).
PROCESS_LABEL = "process"
PATIENT_ID = "PID-LABEL-SCAN-0815"
PATIENT_NAME = "Labelscan^Patricia"
#: Samples that show the jobs below went through every path.
EXPECTED_SAMPLES = (
    "sendqueue_jobs_sent_total{",
    "sendqueue_jobs_retried_total{",
    "sendqueue_jobs_parked_total{",
    "sendqueue_parked_items{",
    'sendqueue_queue_messages{destination="pacs"',
    'sendqueue_tls_cert_expiry_timestamp_seconds{cert="destination/secure/ca"',
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def expositions() -> dict[str, str]:
    """Service name -> the text of its /metrics, after a few jobs went through."""
    if not rabbit.management_available():
        unavailable(f"RabbitMQ management API not reachable at {rabbit.MGMT_URL}")
    if not orthanc_available():
        unavailable("Orthanc is not installed (Debian package orthanc)")
    # A patient whose ID and name no metric label may ever carry (see the last test).
    study = make_study(3, patient_id=PATIENT_ID, extra={"PatientName": PATIENT_NAME})
    retried, parked = sop_instance_uid(study[1]), sop_instance_uid(study[2])

    def status_for(uid: str, nth: int) -> int:
        if uid == parked:
            return 0xC000  # cannot understand: permanent, parked at once
        return 0xA700 if uid == retried and nth == 1 else 0x0000

    with (
        rabbit.temp_vhost() as vhost,
        OrthancProcess() as orthanc,
        ScriptedSCP(status_for=status_for) as scp,
        tempfile.TemporaryDirectory(prefix="sq-obs-") as workdir,
    ):
        settings = stack_settings(
            amqp_url=vhost.amqp_url, orthanc=orthanc, scp=scp, workdir=Path(workdir)
        )
        # A DICOM TLS destination no route sends to: its certificates' expiry is exported.
        settings["destinations"].append(tls_destination(make_pki(Path(workdir))))
        # The sender as `sendqueue run` runs it: its supervisor's metrics, and those of
        # its process, labelled by process.
        async with running(build_config(settings), sender_processes=True) as stack:
            for data in study:
                orthanc.upload(data)
            return await _scrape_when_complete(stack)


def tls_destination(pki: Pki) -> dict[str, object]:
    return {
        "name": "secure",
        "host": "127.0.0.1",
        "port": free_port(),
        "tls": {
            "ca_file": str(pki.ca),
            "cert_file": str(pki.client_cert),
            "key_file": str(pki.client_key),
        },
    }


async def _scrape_when_complete(stack: Stack, timeout: float = 45.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        texts = {name: await stack.scrape(name) for name in SERVICES}
        everything = "\n".join(texts.values())
        missing = [s for s in EXPECTED_SAMPLES if s not in everything]
        if not missing:
            return texts
        if time.monotonic() > deadline:
            raise TimeoutError(f"no samples for {missing} after {timeout} s")
        await asyncio.sleep(0.5)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rabbit_series() -> set[str]:
    """Series names RabbitMQ's rabbitmq_prometheus plugin exports, as Prometheus scrapes it."""
    names: set[str] = set()
    async with aiohttp.ClientSession() as session:
        for path in RABBIT_PATHS:
            try:
                async with session.get(RABBIT_PROMETHEUS + path) as resp:
                    resp.raise_for_status()
                    names |= assets.exported_series(await resp.text())
            except aiohttp.ClientError as exc:
                unavailable(f"rabbitmq_prometheus not reachable at {RABBIT_PROMETHEUS}: {exc}")
    return names


async def test_every_metric_of_the_dashboard_and_rules_is_exported(
    expositions: dict[str, str], rabbit_series: set[str]
) -> None:
    ours = {name for text in expositions.values() for name in assets.exported_series(text)}
    missing = {
        name: sorted(where)
        for name, where in assets.used_metric_names().items()
        if name not in assets.SYNTHETIC | ours | rabbit_series | set(assets.PENDING)
    }
    assert not missing, f"used, but exported by no service nor RabbitMQ: {missing}"


async def test_metrics_awaited_from_other_changes_are_not_exported_yet(
    expositions: dict[str, str],
) -> None:
    # The rules may use a metric another change is adding (assets.PENDING); once a service
    # exports it, its entry must go so that the checks above and below cover it.
    ours = {name for text in expositions.values() for name in assets.exported_series(text)}
    exported = sorted(set(assets.PENDING) & ours)
    assert exported == [], "exported now: remove from tests/observability/assets.PENDING"
    used = assets.used_metric_names()
    assert all(name in used for name in assets.PENDING), "PENDING lists an unused metric"


async def test_the_dashboard_and_rules_use_the_core_metrics() -> None:
    # Guards the test above: a parser that found no names at all would pass it.
    used = assets.used_metric_names()
    for name in (
        "sendqueue_destination_up",
        "sendqueue_queue_messages",
        "sendqueue_oldest_waiting_seconds",
        "sendqueue_end_to_end_latency_seconds_bucket",
        "sendqueue_jobs_retried_total",
        "sendqueue_jobs_parked_total",
        "sendqueue_ingest_lag_changes",
        "rabbitmq_alarms_memory_used_watermark",
        "up",
    ):
        assert name in used, f"{name} is used by neither the dashboard nor the rules"


async def test_docs_list_exactly_the_exported_metrics(expositions: dict[str, str]) -> None:
    exported = {name for text in expositions.values() for name in assets.exported_families(text)}
    documented = {n for n in assets.documented_metrics() if n.startswith("sendqueue_")}
    assert sorted(exported - documented) == [], "exported, but not in docs/metrics.md"
    assert sorted(documented - exported) == [], "in docs/metrics.md, but exported by no service"


async def test_docs_give_each_metric_its_labels(expositions: dict[str, str]) -> None:
    documented = assets.documented_labels()
    seen: dict[str, set[str]] = {}
    for service, text in expositions.items():
        for name, labels in assets.sample_labels(text).items():
            # The supervisor's `process` label is documented once, for every sender metric.
            own = labels - {PROCESS_LABEL} if service == "sender" else labels
            seen.setdefault(name, set()).update(own)
    wrong = {
        name: (sorted(labels), sorted(documented.get(name, set())))
        for name, labels in seen.items()
        if labels != documented.get(name)
    }
    assert not wrong, f"labels seen vs documented: {wrong}"
    assert len(seen) >= 20, f"only {len(seen)} metrics had samples: {sorted(seen)}"


async def test_the_sender_processes_metrics_carry_their_process(
    expositions: dict[str, str],
) -> None:
    supervisor = {"sendqueue_sender_processes", "sendqueue_sender_process_restarts_total"}
    labels = assets.sample_labels(expositions["sender"])
    unlabelled = [n for n, names in labels.items() if PROCESS_LABEL not in names]
    assert sorted(unlabelled) == sorted(supervisor & set(labels))
    assert "sendqueue_jobs_sent_total" in labels
    sender_doc = assets.METRICS_DOC.read_text(encoding="utf-8").split("## Sender", 1)[1]
    assert f"`{PROCESS_LABEL}`" in sender_doc.split("\n## ", 1)[0]


async def test_labels_never_carry_identifiers(expositions: dict[str, str]) -> None:
    # Low cardinality: destinations, queues and classes, never instances, jobs or patients.
    for text in expositions.values():
        for name, labels in assets.sample_labels(text).items():
            bad = {label for label in labels if "uid" in label or label.endswith("_id")}
            assert not bad, f"{name} has identifier labels {bad}"
        assert "1.2.826." not in text  # the factory's UID root: no UID in any label value


async def test_no_label_of_any_metric_carries_a_patient_id_or_name(
    expositions: dict[str, str],
) -> None:
    # Every sample of every metric of every service, after the patient's jobs were
    # delivered, retried and parked: metrics are scraped and kept without any token.
    samples = 0
    for service, text in expositions.items():
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples += 1
                for label, value in sample.labels.items():
                    assert "patient" not in label.lower(), (service, sample.name, label)
                    for secret in (PATIENT_ID, PATIENT_NAME, *PATIENT_NAME.split("^")):
                        assert secret.lower() not in value.lower(), (service, sample.name, label)
    assert samples > 100, f"only {samples} samples: the scan saw too little"
