"""The files a production install uses, checked statically: the lock files, the container
image, the compose stack's production settings and the systemd units (no Docker engine and
no systemd as PID 1 here: `systemd-analyze verify` checks the units where it exists)."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

from sendqueue.shared.config import load_config
from sendqueue.shared.durations import Duration
from tests.observability import assets
from tests.support.availability import unavailable

ROOT = assets.ROOT
SYSTEMD = ROOT / "compose" / "systemd"
SENDQUEUE_SERVICES = ("ingest", "sender", "retry")
UNITS = sorted(SYSTEMD.glob("*.service"))


def _pins(lock: Path) -> dict[str, str]:
    text = lock.read_text(encoding="utf-8")
    return {
        name.lower().replace("_", "-"): version
        for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", text, re.M)
    }


def _hashes_everywhere(lock: Path) -> bool:
    blocks = re.split(r"\n(?=[A-Za-z0-9_.-]+==)", lock.read_text(encoding="utf-8"))
    pinned = [b for b in blocks if re.match(r"[A-Za-z0-9_.-]+==", b)]
    return bool(pinned) and all("--hash=sha256:" in b for b in pinned)


@pytest.mark.parametrize(
    "lock,extra", [("requirements.lock", None), ("requirements-dev.lock", "dev")]
)
def test_each_lock_pins_every_dependency_with_hashes(lock: str, extra: str | None) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    if extra:
        wanted += [Requirement(r) for r in project["optional-dependencies"][extra]]
    pins = _pins(ROOT / lock)
    for requirement in wanted:
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{lock} does not pin {name}"
        assert requirement.specifier.contains(pins[name]), f"{lock}: {name}=={pins[name]}"
    assert _hashes_everywhere(ROOT / lock)


def test_the_image_installs_the_lock_and_checks_its_own_health() -> None:
    text = (ROOT / "compose" / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^COPY requirements\.lock ", text, re.M)
    assert "--require-hashes -r requirements.lock" in text
    assert re.search(r"^COPY .*README\.md", text, re.M), "pyproject's readme must be there"
    assert "--no-deps ." in text
    assert re.search(r'^HEALTHCHECK .*\n?.*CMD \["sendqueue", "healthz"\]', text, re.M)
    ignore = (ROOT / "compose" / "Dockerfile.dockerignore").read_text(encoding="utf-8")
    for needed in ("requirements.lock", "README.md", "pyproject.toml"):
        assert f"!{needed}" in ignore


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = assets.load_yaml(ROOT / "compose" / "docker-compose.yml")
    return data


def test_every_sendqueue_service_has_a_healthcheck_and_a_grace_above_its_own(
    compose: dict[str, Any],
) -> None:
    environ = {
        "SENDQUEUE_ADMIN_TOKEN": "a-test-token-0123456789",
        "SENDQUEUE_ORTHANC_PASSWORD": "x",
    }
    config = load_config(ROOT / "compose" / "sendqueue.toml", environ)
    for name in SENDQUEUE_SERVICES:
        service = compose["services"][name]
        assert service["healthcheck"]["test"] == ["CMD", "sendqueue", "healthz"], name
        grace = Duration.parse(service["stop_grace_period"])
        assert grace > config.sender.shutdown_grace + 5, name


def test_compose_runs_a_current_rabbitmq_and_asks_for_grafanas_password(
    compose: dict[str, Any],
) -> None:
    image = compose["services"]["rabbitmq"]["image"]
    assert re.fullmatch(r"rabbitmq:4\.\d+(\.\d+)?-management", image), image
    password = compose["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert password.startswith("${GRAFANA_ADMIN_PASSWORD:?"), "no default admin password"


def _unit(path: Path) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        elif "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            current.setdefault(key, []).append(value)
    return sections


def test_there_is_a_unit_per_service_and_a_template_for_more_senders() -> None:
    names = {p.name for p in UNITS}
    assert names == {f"sendqueue-{s}.service" for s in SENDQUEUE_SERVICES} | {
        "sendqueue-sender@.service"
    }
    assert (SYSTEMD / "sendqueue.target").is_file()


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_each_unit_restarts_on_failure_outlasts_the_grace_and_is_hardened(unit: Path) -> None:
    service = _unit(unit)["Service"]
    config = load_config(SYSTEMD / "sendqueue.toml", {"SENDQUEUE_ADMIN_TOKEN": "x" * 32})
    assert service["Restart"] == ["on-failure"]
    assert Duration.parse(service["TimeoutStopSec"][0] + "s") > config.sender.shutdown_grace + 10
    assert service["User"] == ["sendqueue"]
    assert service["EnvironmentFile"] == ["/etc/sendqueue/sendqueue.env"]
    for option in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "RestrictSUIDSGID"):
        assert service[option] == ["yes"], option
    assert service["ProtectSystem"] == ["strict"]
    (command,) = service["ExecStart"]
    assert command.startswith("/opt/sendqueue/bin/sendqueue ")
    assert "--config /etc/sendqueue/sendqueue.toml" in command
    assert _unit(unit)["Install"]["WantedBy"] == ["sendqueue.target"]


def test_systemd_analyze_verifies_every_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        unavailable("systemd-analyze is not installed (Debian package systemd)")
    # verify checks that ExecStart's program exists: point it at one that does.
    program = tmp_path / "opt" / "sendqueue" / "bin" / "sendqueue"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    names = []
    for unit in [*UNITS, SYSTEMD / "sendqueue.target"]:
        text = unit.read_text(encoding="utf-8").replace(
            "/opt/sendqueue/", f"{tmp_path}/opt/sendqueue/"
        )
        (tmp_path / unit.name).write_text(text)
        names.append(unit.name.replace("@.service", "@8111.service"))
    done = subprocess.run(
        [analyze, "verify", *[str(tmp_path / n) for n in names]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 0 and not output, output


def test_the_scripts_leave_a_packaged_orthanc_alone() -> None:
    # A PACS engineer's machine may run the Debian Orthanc service: the demo and the tests
    # start their own, on their own ports, and never stop or reconfigure that one.
    for script in ("scripts/bootstrap", "scripts/demo", "scripts/test"):
        text = (ROOT / script).read_text(encoding="utf-8")
        assert not re.search(r"init\.d/orthanc|systemctl\s+\S+\s+orthanc|service orthanc", text)
        assert "/etc/orthanc" not in text, script
