"""compose/: the files parse, reference files that exist, and agree on names and ports.

Docker is not available here; these checks catch what `docker compose up` would trip on
first: a missing mounted file, a scrape target that is not a service, a port mismatch.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import pytest

from sendqueue.shared.config import Config, load_config, parse_listen
from tests.observability import assets
from tests.support.availability import unavailable

SENDQUEUE_SERVICES = ("ingest", "sender", "retry")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = assets.load_yaml(assets.COMPOSE / "docker-compose.yml")
    return data


@pytest.fixture(scope="module")
def prometheus_config() -> dict[str, Any]:
    data: dict[str, Any] = assets.load_yaml(assets.COMPOSE / "prometheus" / "prometheus.yml")
    return data


@pytest.fixture(scope="module")
def sendqueue_config() -> Config:
    # The compose file gives the retry service its admin token from the environment.
    environ = {
        "SENDQUEUE_ADMIN_TOKEN": "a-test-token-0123456789",
        "SENDQUEUE_ORTHANC_PASSWORD": "x",
    }
    return load_config(assets.COMPOSE / "sendqueue.toml", environ)


def test_the_stack_has_every_service(compose: dict[str, Any]) -> None:
    services = set(compose["services"])
    expected = {"rabbitmq", "orthanc", "prometheus", "grafana", *SENDQUEUE_SERVICES}
    assert expected <= services


def test_every_bind_mount_and_build_file_exists(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for source, _target in assets.bind_mounts(service):
            assert (assets.COMPOSE / source).exists(), f"{name}: {source} does not exist"
        build = service.get("build")
        if build:
            context = assets.COMPOSE / build["context"]
            assert (context / build["dockerfile"]).is_file(), name


def test_the_three_services_share_one_image_and_pick_their_command(
    compose: dict[str, Any],
) -> None:
    images = {compose["services"][name]["image"] for name in SENDQUEUE_SERVICES}
    assert len(images) == 1
    for name in SENDQUEUE_SERVICES:
        command = compose["services"][name]["command"]
        assert command[0] == name
        config_path = command[command.index("--config") + 1]
        mounts = dict(assets.bind_mounts(compose["services"][name]))
        assert mounts["./sendqueue.toml"] == config_path


def test_the_dockerfile_copies_files_that_exist() -> None:
    text = (assets.COMPOSE / "Dockerfile").read_text(encoding="utf-8")
    sources = [
        source
        for line in re.findall(r"^COPY (.+)$", text, re.M)
        for source in line.split()[:-1]
        if not source.startswith("--")
    ]
    assert sources
    for source in sources:
        assert (assets.ROOT / source).exists(), source
    assert re.search(r'^ENTRYPOINT \["sendqueue"\]', text, re.M)


def test_rabbitmq_runs_the_management_and_prometheus_plugins(compose: dict[str, Any]) -> None:
    plugins = (assets.COMPOSE / "rabbitmq" / "enabled_plugins").read_text(encoding="utf-8")
    assert re.fullmatch(r"\[[a-z_,\s]+\]\.\s*", plugins), "an Erlang list term ending in '.'"
    assert {"rabbitmq_management", "rabbitmq_prometheus"} <= set(re.findall(r"\w+", plugins))
    mounts = dict(assets.bind_mounts(compose["services"]["rabbitmq"]))
    assert mounts["./rabbitmq/enabled_plugins"] == "/etc/rabbitmq/enabled_plugins"


def test_prometheus_scrapes_each_service_on_its_listen_port(
    compose: dict[str, Any], prometheus_config: dict[str, Any], sendqueue_config: Config
) -> None:
    targets = _targets(prometheus_config)
    for name in SENDQUEUE_SERVICES:
        _, port = parse_listen(getattr(sendqueue_config, name).listen)
        assert targets[f"sendqueue-{name}"] == [f"{name}:{port}"]
        # Every replica, found by DNS, not one static address.
        job = _jobs(prometheus_config)[f"sendqueue-{name}"]
        assert "static_configs" not in job
        assert job["dns_sd_configs"] == [{"names": [name], "type": "A", "port": port}]
    for job_name, hosts in targets.items():
        for host in hosts:
            assert host.split(":")[0] in compose["services"], f"{job_name}: {host} is no service"


def test_prometheus_scrapes_rabbitmq_totals_and_queue_details(
    prometheus_config: dict[str, Any],
) -> None:
    jobs = {job["job_name"]: job for job in prometheus_config["scrape_configs"]}
    assert jobs["rabbitmq"]["static_configs"][0]["targets"] == ["rabbitmq:15692"]
    detailed = jobs["rabbitmq-detailed"]
    assert detailed["metrics_path"] == "/metrics/detailed"
    assert set(detailed["params"]["family"]) == {"queue_coarse_metrics", "queue_consumer_count"}


def test_every_scrape_job_has_an_alert_for_its_target_down(
    prometheus_config: dict[str, Any],
) -> None:
    # One alert per service, named for it: "up == 0" of an unnamed target tells nobody what.
    selectors = [re.search(r'up\{job=(~?)"([^"]+)"\}', rule["expr"]) for rule in assets.rules()]
    jobs = [(m.group(1), m.group(2)) for m in selectors if m]
    assert len(jobs) == 4
    for job in _targets(prometheus_config):
        covering = [
            value for op, value in jobs if (re.fullmatch(value, job) if op else value == job)
        ]
        assert len(covering) == 1, f"{job}: down alerts {covering}"


#: The rabbitmq_prometheus family each per-queue metric of the rules comes from
#: (/metrics/detailed serves only the families asked for).
_DETAILED_FAMILIES = {
    "rabbitmq_detailed_queue_messages_ready": "queue_coarse_metrics",
    "rabbitmq_detailed_queue_consumers": "queue_consumer_count",
}


def test_prometheus_scrapes_the_broker_families_the_rules_need(
    prometheus_config: dict[str, Any],
) -> None:
    jobs = {job["job_name"]: job for job in prometheus_config["scrape_configs"]}
    families = set(jobs["rabbitmq-detailed"]["params"]["family"])
    used = {
        name
        for rule in assets.all_rules()
        for name in assets.metric_names(rule["expr"])
        if name.startswith("rabbitmq_detailed_")
    }
    assert used == set(_DETAILED_FAMILIES)
    for name in used:
        assert _DETAILED_FAMILIES[name] in families, name


def test_the_services_listen_on_all_interfaces_with_an_admin_token(
    sendqueue_config: Config, compose: dict[str, Any]
) -> None:
    for name in SENDQUEUE_SERVICES:
        host, _ = parse_listen(getattr(sendqueue_config, name).listen)
        assert host == "0.0.0.0", f"{name} must be reachable by Prometheus"
    environment = compose["services"]["retry"]["environment"]
    assert environment["SENDQUEUE_ADMIN_TOKEN"].startswith("${SENDQUEUE_ADMIN_TOKEN:?")


def test_published_ports_stay_on_loopback(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond localhost"


def _jobs(prometheus_config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {job["job_name"]: job for job in prometheus_config["scrape_configs"]}


def _targets(prometheus_config: dict[str, Any]) -> dict[str, list[str]]:
    """host:port of each job, whether static or found by DNS (name:port)."""
    found: dict[str, list[str]] = {}
    for name, job in _jobs(prometheus_config).items():
        hosts = [t for sc in job.get("static_configs", []) for t in sc["targets"]]
        hosts += [f"{n}:{sd['port']}" for sd in job.get("dns_sd_configs", []) for n in sd["names"]]
        found[name] = hosts
    return found


def test_the_sender_runs_as_several_replicas_and_alerts_go_to_an_alertmanager(
    compose: dict[str, Any], prometheus_config: dict[str, Any]
) -> None:
    assert compose["services"]["sender"]["deploy"]["replicas"] >= 2
    (manager,) = prometheus_config["alerting"]["alertmanagers"]
    (target,) = manager["static_configs"][0]["targets"]
    assert target.split(":")[0] in compose["services"]
    mounts = dict(assets.bind_mounts(compose["services"]["alertmanager"]))
    assert mounts["./alertmanager/alertmanager.yml"] == "/etc/alertmanager/alertmanager.yml"


def test_the_alertmanager_config_is_valid() -> None:
    amtool = shutil.which("amtool")
    if amtool is None:
        unavailable("amtool is not installed (Debian package prometheus-alertmanager)")
    path = assets.COMPOSE / "alertmanager" / "alertmanager.yml"
    done = subprocess.run(
        [amtool, "check-config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
