"""Shared fixtures for real-component tests: RabbitMQ vhosts, Orthanc, DICOM peers.

A component that is missing makes its tests skip locally, with the reason, but fail in CI
(CI=true): a CI run must never go green by skipping everything.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import rabbit
from tests.support.availability import unavailable
from tests.support.broker_lock import using_broker
from tests.support.orthanc import OrthancProcess, orthanc_available
from tests.support.scp import ScriptedSCP, StorescpProcess

# Fixtures that need a real component: tests using them are marked `integration` on their
# own, so `-m "not integration"` runs the unit tests alone.
INTEGRATION_FIXTURES = {
    "require_rabbitmq",
    "require_orthanc",
    "amqp_url",
    "rabbit_vhost",
    "orthanc",
    "scp",
    "storescp",
}

_LOGS = pytest.StashKey[dict[str, Path]]()
_OWN_BASETEMP = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    """Each run gets a base temp dir of its own, removed at the end: pytest's shared
    /tmp/pytest-of-<user>/ is pruned by whichever run starts next, under a concurrent
    run's feet."""
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        own = Path(tempfile.mkdtemp(prefix="sq-pytest-"))
        config.option.basetemp = str(own)
        config.stash[_OWN_BASETEMP] = own


def pytest_unconfigure(config: pytest.Config) -> None:
    own = config.stash.get(_OWN_BASETEMP, None)
    if own is not None:
        shutil.rmtree(own, ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    """On a failed test, append the tail of the logs its fixtures registered to the report
    (the files are still there: teardown has not run yet)."""
    report = yield
    if report.when == "call" and report.failed:
        for name, path in item.stash.get(_LOGS, {}).items():
            report.sections.append((f"{name} log (tail)", _tail(path)))
    return report


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"({path}: {exc})"


def attach_log(request: pytest.FixtureRequest, name: str, path: Path) -> None:
    request.node.stash.setdefault(_LOGS, {})[name] = path


# -- RabbitMQ -------------------------------------------------------------------------------

_rabbit_ok: bool | None = None


def _require_rabbit() -> None:
    global _rabbit_ok
    if _rabbit_ok is None:
        _rabbit_ok = rabbit.management_available()
    if not _rabbit_ok:
        unavailable(f"RabbitMQ management API not reachable at {rabbit.MGMT_URL}")


@pytest.fixture
def require_rabbitmq() -> None:
    """For tests that manage vhosts themselves: skip (fail in CI) without RabbitMQ."""
    _require_rabbit()


@pytest.fixture
def rabbit_vhost(require_rabbitmq: None) -> Iterator[rabbit.RabbitVhost]:
    """A fresh vhost (sq-test-<8 hex>), guest has full rights, deleted after the test.

    Held with a shared lock on the machine's broker (tests/support/broker_lock.py): a test
    that stops the broker or raises an alarm waits for the others, and they for it."""
    with using_broker(), rabbit.temp_vhost() as vhost:
        yield vhost


@pytest.fixture
def amqp_url(rabbit_vhost: rabbit.RabbitVhost) -> str:
    """amqp://guest:guest@127.0.0.1:5672/<vhost> of a vhost of this test only."""
    return rabbit_vhost.amqp_url


# -- Orthanc --------------------------------------------------------------------------------


@pytest.fixture
def require_orthanc() -> None:
    """For tests that build their own OrthancProcess: skip (fail in CI) without Orthanc."""
    if not orthanc_available():
        unavailable("Orthanc is not installed (Debian package orthanc)")


@pytest.fixture
def orthanc(request: pytest.FixtureRequest, require_orthanc: None) -> Iterator[OrthancProcess]:
    """A running private Orthanc (user sq/sq-pass, StableAge 2 s), removed after the test.

    A test that needs another config builds `OrthancProcess(...)` itself in a `with` block
    (and asks for the require_orthanc fixture).
    """
    with OrthancProcess() as server:
        attach_log(request, "orthanc", server.log_path)
        yield server


# -- DICOM peers ----------------------------------------------------------------------------


@pytest.fixture
def scp() -> Iterator[ScriptedSCP]:
    """A started ScriptedSCP (AE SCRIPTEDSCP, everything succeeds), stopped after the test."""
    with ScriptedSCP() as server:
        yield server


@pytest.fixture
def storescp(request: pytest.FixtureRequest) -> Iterator[StorescpProcess]:
    """DCMTK storescp (AE STORESCP) on a free port, files in a temp dir removed after."""
    if shutil.which("storescp") is None:
        unavailable("storescp is not installed (Debian package dcmtk)")
    with StorescpProcess() as server:
        attach_log(request, "storescp", server.log_path)
        yield server


# -- misc -----------------------------------------------------------------------------------


@pytest.fixture
def tmp_state_dir(tmp_path: Path) -> Path:
    """An empty directory for a service's state (cursor files etc.)."""
    path = tmp_path / "state"
    path.mkdir()
    return path
