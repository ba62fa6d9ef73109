"""Job-state log lines: one JSON line per state change, with its fields, and never a secret.

`sendqueue run` runs as a subprocess, exactly as deployed: SENDQUEUE_LOG_FORMAT=json, a
RabbitMQ user, an Orthanc password and admin tokens that are all secrets. Three jobs go
through every state (queued, sent, failed, retry scheduled, parked, requeued, deleted), then
the whole captured log is searched for the secrets, plain and base64-encoded.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import pytest

from tests.observability.assets import ROOT
from tests.support import rabbit
from tests.support.dicom_factory import make_instance, sop_instance_uid
from tests.support.orthanc import OrthancProcess
from tests.support.ports import free_port
from tests.support.scp import ScriptedSCP

pytestmark = pytest.mark.slow

JOB_EVENTS = {"queued", "sent", "failed", "retry scheduled", "parked", "requeued", "deleted"}


class Secrets:
    def __init__(self) -> None:
        self.orthanc_password = "orthanc-" + secrets.token_hex(8)
        self.amqp_user = f"sq-test-log-{secrets.token_hex(4)}"
        self.amqp_password = "amqp-" + secrets.token_hex(8)
        self.admin_token = "admin-" + secrets.token_hex(8)
        self.operator_token = "ops-" + secrets.token_hex(8)

    def all(self) -> list[str]:
        plain = [self.orthanc_password, self.amqp_password, self.admin_token, self.operator_token]
        basic = [
            base64.b64encode(f"sqlog:{self.orthanc_password}".encode()).decode(),
            base64.b64encode(f"{self.amqp_user}:{self.amqp_password}".encode()).decode(),
        ]
        return plain + basic


@pytest.fixture
def secret() -> Secrets:
    return Secrets()


@pytest.fixture
def amqp_user(rabbit_vhost: rabbit.RabbitVhost, secret: Secrets) -> Iterator[str]:
    """A RabbitMQ user of its own with a secret password, allowed on the test's vhost."""
    user = quote(secret.amqp_user, safe="")
    rabbit.management_request(
        "PUT", f"/api/users/{user}", {"password": secret.amqp_password, "tags": "management"}
    )
    try:
        rights = {"configure": ".*", "write": ".*", "read": ".*"}
        rabbit.management_request(
            "PUT", f"/api/permissions/{quote(rabbit_vhost.name, safe='')}/{user}", rights
        )
        yield secret.amqp_user
    finally:
        rabbit.management_request("DELETE", f"/api/users/{user}")


def _config(
    vhost: str, orthanc: OrthancProcess, scp: ScriptedSCP, secret: Secrets, workdir: Path
) -> tuple[str, dict[str, int]]:
    ports = {name: free_port() for name in ("ingest", "sender", "retry")}
    amqp_host = rabbit.AMQP_HOST
    mgmt = urlsplit(rabbit.MGMT_URL)
    creds = f"{secret.amqp_user}:{secret.amqp_password}"
    text = f"""
[orthanc]
url = "{orthanc.url}"
username = "sqlog"

[amqp]
url = "amqp://{creds}@{amqp_host}/{quote(vhost, safe="")}"
prefix = "sqlog"
management_url = "http://{creds}@{mgmt.hostname}:{mgmt.port}"
depth_interval = "1s"

[ingest]
listen = "127.0.0.1:{ports["ingest"]}"
poll_interval = "200ms"
state_dir = "{workdir / "ingest"}"
start_from = "beginning"

[sender]
listen = "127.0.0.1:{ports["sender"]}"
spool_dir = "{workdir / "spool"}"
probe_min = "500ms"
probe_max = "1s"
shutdown_grace = "2s"

[retry]
listen = "127.0.0.1:{ports["retry"]}"
delays = ["1s"]
max_attempts = 3
jitter = 0
state_dir = "{workdir / "retry"}"
admin_tokens = {{ ops = "{secret.operator_token}" }}

[[destinations]]
name = "pacs"
host = "127.0.0.1"
port = {scp.port}
called_aet = "{scp.aet}"

[[routes]]
destinations = ["pacs"]
"""
    return text, ports


class ServiceProcess:
    """`sendqueue run` as a subprocess, its stderr (the log) in a file; stopped by PID."""

    def __init__(self, config: Path, log: Path, environ: dict[str, str]) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sendqueue.services.cli", "run", "--config", str(config)],
                cwd=ROOT,
                env=environ,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


async def _wait_healthy(proc: ServiceProcess, ports: dict[str, int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        for port in ports.values():
            while True:
                assert proc.proc.poll() is None, proc.log.read_text()[-3000:]
                try:
                    async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, "services not healthy in time"
                await asyncio.sleep(0.2)


async def _admin(port: int, path: str, token: str, body: dict[str, Any] | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            "POST" if body is not None else "GET",
            f"http://127.0.0.1:{port}{path}",
            json=body,
            headers=headers,
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def _until(check: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.3)


def _lines(log: Path) -> list[dict[str, Any]]:
    parsed = []
    for line in log.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                parsed.append(json.loads(line))
            except json.JSONDecodeError:
                pytest.fail(f"a log line is not JSON: {line[:300]}")
    return parsed


@pytest.mark.usefixtures("require_orthanc")
async def test_job_state_lines_carry_their_fields_and_no_secret_is_ever_logged(
    rabbit_vhost: rabbit.RabbitVhost, amqp_user: str, secret: Secrets
) -> None:
    # Given three instances: one delivered, one retried once, one refused for good
    ok, flaky, refused = (make_instance(patient_id=f"LOG{i}") for i in range(3))
    flaky_uid, refused_uid = sop_instance_uid(flaky), sop_instance_uid(refused)

    def status_for(uid: str, nth: int) -> int:
        if uid == refused_uid:
            return 0xC000
        return 0xA700 if uid == flaky_uid and nth == 1 else 0x0000

    with (
        OrthancProcess(users={"sqlog": secret.orthanc_password}) as orthanc,
        ScriptedSCP(status_for=status_for) as scp,
        tempfile.TemporaryDirectory(prefix="sq-logs-") as tmp,
    ):
        workdir = Path(tmp)
        text, ports = _config(rabbit_vhost.name, orthanc, scp, secret, workdir)
        (workdir / "sendqueue.toml").write_text(text)
        environ = {
            **os.environ,
            "SENDQUEUE_LOG_FORMAT": "json",
            "SENDQUEUE_LOG_LEVEL": "DEBUG",
            "SENDQUEUE_ORTHANC_PASSWORD": secret.orthanc_password,
            "SENDQUEUE_ADMIN_TOKEN": secret.admin_token,
        }
        proc = ServiceProcess(workdir / "sendqueue.toml", workdir / "sendqueue.log", environ)
        try:
            await _drive(proc, ports, orthanc, scp, secret, [ok, flaky, refused], refused_uid)
        finally:
            await asyncio.to_thread(proc.stop)
        log_text = proc.log.read_text(encoding="utf-8")
        lines = _lines(proc.log)

    # Then no secret appears anywhere, in any form
    for value in secret.all():
        assert value not in log_text, "a secret was logged"
    # ... and every job state change is one JSON line with its fields
    events = [line for line in lines if line.get("event") in JOB_EVENTS]
    by_event: dict[str, list[dict[str, Any]]] = {}
    for line in events:
        assert {"time", "level", "logger", "message"} <= line.keys()
        assert line["message"] == line["event"]
        assert line["destination"] == "pacs"
        assert line["orthanc_id"] and line["sop_instance_uid"] and line["outcome"]
        by_event.setdefault(line["event"], []).append(line)
    assert set(by_event) == JOB_EVENTS, sorted(by_event)
    assert len(by_event["queued"]) == 3
    assert {line["sop_instance_uid"] for line in by_event["sent"]} == {
        sop_instance_uid(ok),
        flaky_uid,
    }
    (retry,) = by_event["retry scheduled"]
    assert retry["sop_instance_uid"] == flaky_uid
    assert retry["attempt"] == 1 and retry["delay"] == "1s" and retry["reason"]
    (flaky_sent,) = [s for s in by_event["sent"] if s["sop_instance_uid"] == flaky_uid]
    assert flaky_sent["attempt"] == 2 and flaky_sent["outcome"] == "delivered"
    for failed in by_event["failed"]:
        assert failed["attempt"] >= 1 and failed["reason"] and failed["outcome"]
    assert len(by_event["parked"]) == 2  # parked, requeued, parked again
    for parked in by_event["parked"]:
        assert parked["sop_instance_uid"] == refused_uid
        assert parked["reason"] and parked["reason_class"] and "attempt" in parked
    assert [line["sop_instance_uid"] for line in by_event["requeued"]] == [refused_uid]
    assert [line["sop_instance_uid"] for line in by_event["deleted"]] == [refused_uid]


async def _drive(
    proc: ServiceProcess,
    ports: dict[str, int],
    orthanc: OrthancProcess,
    scp: ScriptedSCP,
    secret: Secrets,
    instances: list[bytes],
    refused_uid: str,
) -> None:
    """Upload, wait for the outcomes, requeue the parked job, wait, delete it."""
    await _wait_healthy(proc, ports)
    for data in instances:
        await asyncio.to_thread(orthanc.upload, data)
    await asyncio.to_thread(scp.wait_for, 2, 30.0)
    retry_port = ports["retry"]

    def parked_count(n: int) -> Any:
        async def check() -> bool:
            listing = await _admin(retry_port, "/api/parked", secret.operator_token)
            return len(listing["items"]) == n

        return check

    await _until(parked_count(1), "the refused job parked")
    answer = await _admin(retry_port, "/api/parked/requeue", secret.admin_token, {"all": True})
    assert answer["requeued"] == 1

    async def refused_twice() -> bool:
        return scp.receive_count(refused_uid) == 2

    await _until(refused_twice, "the requeued job refused again")
    await _until(parked_count(1), "the refused job parked again")
    answer = await _admin(retry_port, "/api/parked/delete", secret.operator_token, {"all": True})
    assert answer["deleted"] == 1
