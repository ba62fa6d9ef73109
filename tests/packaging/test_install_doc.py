"""docs/install.md, followed literally in a scratch root.

Every ```sh block of the guide runs, in order, with bash -e, from a copy of the release
tree. Paths under /opt/sendqueue, /etc/sendqueue and /etc/systemd/system are moved into the
scratch root; what needs root on a real machine or systemd as PID 1 is replaced by a shim
that records its arguments (apt-get, useradd, chgrp, systemctl, runuser). The RabbitMQ
recipe runs for real against the machine's broker, under a vhost and a user of this test
(removed afterwards). Then the services start exactly as their units say (ExecStart,
Environment, EnvironmentFile) and an instance stored in Orthanc reaches the PACS.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import dicom_destination, to_toml, wait_received
from tests.packaging.tree import ROOT, run, tracked_tree
from tests.support import rabbit
from tests.support.dicom_factory import make_study, sop_instance_uid
from tests.support.ports import free_port
from tests.support.processes import terminate

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

GUIDE = ROOT / "docs" / "install.md"
MOVED = (
    "/opt/sendqueue",
    "/etc/sendqueue",
    "/etc/systemd/system",
    "/var/lib/sendqueue",
    "/var/cache/sendqueue",
)
SERVICES = ("ingest", "sender", "retry")


def guide_blocks() -> list[tuple[str, str]]:
    """(section heading, shell code) of every ```sh block, in order."""
    blocks: list[tuple[str, str]] = []
    heading = ""
    for match in re.finditer(r"^(## [^\n]+)$|^```sh\n(.*?)^```$", GUIDE.read_text(), re.M | re.S):
        if match.group(1):
            heading = match.group(1)
        else:
            blocks.append((heading, match.group(2)))
    return blocks


_SHIMS = {
    # name: body (bash); every shim logs its arguments to $SHIM_LOG
    "apt-get": "exit 0",
    "dnf": "exit 0",
    "getent": "exit 2",  # no user sendqueue yet: the guide creates it
    "useradd": "exit 0",
    "chgrp": "exit 0",  # the group exists only on a real machine
    "systemctl": "exit 0",
    "runuser": 'while [ "$1" != "--" ]; do shift; done; shift; exec "$@"',
}

_RABBITMQCTL = '''\
"""rabbitmqctl with the guide's vhost and user names mapped to the test's."""
import os, subprocess, sys
args = sys.argv[1:]
verb = args[0] if args else ""
vhost, user = {vhost!r}, {user!r}
if verb == "add_vhost":
    args[1] = vhost
elif verb in ("add_user", "set_user_tags"):
    args[1] = user
elif verb == "set_permissions":
    args[args.index("-p") + 1] = vhost
    args[args.index("-p") + 2] = user
sys.exit(subprocess.call([{real!r}, *args]))
'''


@pytest.fixture
def rabbit_names(require_rabbitmq) -> Iterator[tuple[str, str]]:
    suffix = uuid.uuid4().hex[:8]
    vhost, user = f"sq-test-{suffix}", f"sq-test-user-{suffix}"
    try:
        yield vhost, user
    finally:
        rabbit.delete_vhost(vhost)
        subprocess.run(["rabbitmqctl", "-q", "delete_user", user], capture_output=True, timeout=60)


def _shims(root: Path, vhost: str, user: str) -> Path:
    shims = root / "shims"
    shims.mkdir()
    for name, body in _SHIMS.items():
        (shims / name).write_text(f'#!/bin/bash\necho "{name} $*" >> "$SHIM_LOG"\n{body}\n')
    mapper = root / "rabbitmqctl_as_test.py"
    # The real one, found before the shims go first on PATH (the shim must not call itself).
    real = shutil.which("rabbitmqctl")
    assert real is not None and not real.startswith(str(shims))
    mapper.write_text(_RABBITMQCTL.format(vhost=vhost, user=user, real=real))
    (shims / "rabbitmqctl").write_text(
        f'#!/bin/bash\necho "rabbitmqctl $*" >> "$SHIM_LOG"\nexec {sys.executable} {mapper} "$@"\n'
    )
    for shim in shims.iterdir():
        shim.chmod(0o755)
    return shims


def _moved(text: str, root: Path) -> str:
    for path in MOVED:
        text = text.replace(path, f"{root}{path}")
    return text


def _engineer_edits(root: Path, config: dict, env: dict[str, str]) -> None:
    """What the guide asks an engineer to do after its step 3: edit both files."""
    (root / "etc/sendqueue/sendqueue.toml").write_text(to_toml(config))
    (root / "etc/sendqueue/sendqueue.env").write_text(
        "".join(f"{key}={value}\n" for key, value in env.items())
    )


def _unit_command(unit: Path, root: Path) -> tuple[list[str], dict[str, str]]:
    """ExecStart and the environment systemd would give it, with the moved paths."""
    command: list[str] = []
    env: dict[str, str] = {}
    for line in unit.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "ExecStart":
            command = _moved(value, root).split()
        elif key == "Environment":
            name, _, val = value.partition("=")
            env[name] = val
        elif key == "EnvironmentFile":
            for entry in Path(_moved(value.lstrip("-"), root)).read_text().splitlines():
                if entry and not entry.startswith("#"):
                    name, _, val = entry.partition("=")
                    env[name] = val
    return command, env


async def test_the_install_guide_ends_with_every_service_running(
    tmp_path, rabbit_names, orthanc, scp
):
    vhost, user = rabbit_names
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)  # there on any systemd machine
    release = tracked_tree(tmp_path / "release")
    shim_log = tmp_path / "shims.log"
    env = {
        **os.environ,
        "PATH": f"{_shims(root, vhost, user)}:{os.environ['PATH']}",
        "SHIM_LOG": str(shim_log),
    }
    env.pop("VIRTUAL_ENV", None)
    listen = {name: f"127.0.0.1:{free_port()}" for name in SERVICES}
    amqp = f"amqp://{user}:CHANGE-ME@127.0.0.1:5672/{vhost}"
    config = {
        "orthanc": {"url": orthanc.url, "username": orthanc.username},
        "amqp": {
            "url": "amqp://nobody:wrong@127.0.0.1:5672/not-this-one",  # the env file wins
            "prefix": "sendqueue",
            "management_url": f"http://{user}:CHANGE-ME@127.0.0.1:15672",
        },
        "ingest": {
            "listen": listen["ingest"],
            "state_dir": f"{root}/var/lib/sendqueue/ingest",
            "start_from": "now",
            "poll_interval": "250ms",
        },
        "sender": {
            "listen": listen["sender"],
            "spool_dir": f"{root}/var/cache/sendqueue",
            "shutdown_grace": "20s",
            "probe_min": "200ms",
        },
        "retry": {"listen": listen["retry"], "state_dir": f"{root}/var/lib/sendqueue/retry"},
        "destinations": [dicom_destination("pacs", scp.port, scp.aet)],
        "routes": [{"destinations": ["pacs"]}],
    }
    secrets = {
        "SENDQUEUE_AMQP_URL": amqp,
        "SENDQUEUE_ORTHANC_PASSWORD": orthanc.password,
        "SENDQUEUE_ADMIN_TOKEN": "a-test-admin-token-of-32-characters",
    }

    # When every block of the guide runs, in order (the engineer edits after step 3)
    printed: dict[str, str] = {}
    for heading, code in guide_blocks():
        script = "set -euo pipefail\n" + _moved(textwrap.dedent(code), root)
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=release,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"{heading}:\n{script}\n{done.stdout}\n{done.stderr}"
        printed[heading] = printed.get(heading, "") + done.stdout
        if heading.startswith("## 3."):
            _engineer_edits(root, config, secrets)

    # Then the files are where the guide says, with its modes
    assert (root / "opt/sendqueue/bin/sendqueue").is_file()
    assert (root / "etc/sendqueue/sendqueue.toml").stat().st_mode & 0o777 == 0o640
    assert (root / "etc/sendqueue/sendqueue.env").stat().st_mode & 0o777 == 0o640
    units = root / "etc/systemd/system"
    assert {p.name for p in units.iterdir()} >= {f"sendqueue-{s}.service" for s in SERVICES}
    calls = shim_log.read_text()
    assert "systemctl daemon-reload" in calls
    assert "systemctl start sendqueue.target" in calls
    (checked,) = [out for heading, out in printed.items() if heading.startswith("## 6.")]
    assert "ok    destination pacs (dicom)" in checked, checked

    # And the services, started as their units say, forward an instance
    (root / "var/lib/sendqueue").mkdir(parents=True, exist_ok=True)  # StateDirectory
    (root / "var/cache/sendqueue").mkdir(parents=True, exist_ok=True)  # CacheDirectory
    procs = []
    try:
        for name in SERVICES:
            command, unit_env = _unit_command(units / f"sendqueue-{name}.service", root)
            log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - owned by the process
            procs.append(
                subprocess.Popen(
                    command,
                    env={"PATH": env["PATH"], **unit_env},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=tmp_path,
                )
            )
        healthz = root / "opt/sendqueue/bin/sendqueue"
        for name in SERVICES:
            _wait_healthy(healthz, listen[name], procs, tmp_path)
        study = make_study(2)
        for data in study:
            orthanc.upload(data)
        assert await wait_received(scp, 2, timeout=60) == {sop_instance_uid(d) for d in study}
    finally:
        codes = [terminate(proc, timeout=60) for proc in procs]
    assert codes == [0, 0, 0], [(tmp_path / f"{n}.log").read_text()[-2000:] for n in SERVICES]


def _wait_healthy(program: Path, listen: str, procs: list, tmp_path: Path) -> None:
    deadline = time.monotonic() + 60
    while subprocess.run([program, "healthz", "--listen", listen], capture_output=True).returncode:
        for name, proc in zip(SERVICES, procs, strict=True):
            assert proc.poll() is None, (tmp_path / f"{name}.log").read_text()[-3000:]
        assert time.monotonic() < deadline, f"{listen} not healthy"
        time.sleep(0.3)


def test_the_guide_runs_a_block_per_step() -> None:
    headings = [heading for heading, _ in guide_blocks()]
    for step in ("## 1.", "## 2.", "## 3.", "## 4.", "## 6.", "## 7."):
        assert any(h.startswith(step) for h in headings), step


def test_shim_names_are_real_commands_of_the_guide() -> None:
    code = "\n".join(code for _, code in guide_blocks())
    for name in ("apt-get", "useradd", "systemctl", "runuser", "rabbitmqctl", "chgrp"):
        assert re.search(rf"\b{name}\b", code), f"the shim for {name} shims nothing"
    assert run("bash", "-n", "-c", code) == ""
