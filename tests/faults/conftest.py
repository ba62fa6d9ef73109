"""The fault suite: `pytest -m faults` (or `pytest tests/faults`).

SQ_FAULTS_INSTANCES sets the workload of every scenario (default 500);
SQ_FAULTS_SEED makes the random moments of the faults repeatable (default: a new seed,
printed in the report of a failed scenario); SQ_FAULTS_KEEP_LOGS=DIR keeps the services'
logs of each scenario in DIR/<scenario>/. bench/faults.py runs the same scenarios with
larger workloads and longer windows.
"""

from __future__ import annotations

import os
import random

import pytest

from tests.faults.spool_disk import can_mount
from tests.support import rabbit
from tests.support.availability import unavailable
from tests.support.orthanc import orthanc_available


@pytest.fixture
def instances() -> int:
    return int(os.environ.get("SQ_FAULTS_INSTANCES", "500"))


@pytest.fixture
def seed() -> int:
    return int(os.environ.get("SQ_FAULTS_SEED") or random.randrange(1 << 32))


@pytest.fixture
def fault_components() -> None:
    """RabbitMQ (with rabbitmqctl: the broker faults) and Orthanc, or skip (fail in CI)."""
    if not rabbit.management_available():
        unavailable(f"RabbitMQ management API not reachable at {rabbit.MGMT_URL}")
    if not orthanc_available():
        unavailable("Orthanc is not installed (Debian package orthanc)")


@pytest.fixture
def mountable() -> None:
    if (why := can_mount()) is not None:
        unavailable(why)
