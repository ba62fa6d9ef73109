"""Patient data behind a token, on a real retry service: scopes, CSV, anonymous mode,
POST /api/send only where it is audited, and the admin listen over TLS."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import ssl
import subprocess
import urllib.request

import aiohttp
import pytest

from tests.destinations.pki import make_pki, openssl_available
from tests.integration.harness import ADMIN_TOKEN, PREFIX, dicom_destination, wait_for
from tests.integration.parked_factory import fill_parked, parked_job
from tests.integration.test_cli import sendqueue
from tests.support.availability import unavailable
from tests.support.ports import free_port

READ_TOKEN = "auditor-read-token-01"
PATIENT = "PAT-SECRET-4711"
NAME = '=HYPERLINK("http://evil.example")'
#: Every GET that shows patient data, or anything about the queues.
READS = [
    "/api/parked",
    "/api/parked?format=csv",
    "/api/audit",
    "/api/queues",
    "/api/operations/current",
    "/api/whoami",
]
#: Every state change, with a body it would accept.
ACTIONS = [
    ("/api/parked/requeue", {"all": True}),
    ("/api/parked/delete", {"all": True}),
    ("/api/destinations/pacs/pause", {}),
    ("/api/destinations/pacs/resume", {}),
    ("/api/send", {"destination": "pacs", "resources": ["0123-abcd"]}),
]


async def raw(pipeline, method: str, path: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, pipeline.url("retry", path), headers=headers) as response,
    ):
        return response.status, await response.text()


async def test_reads_need_a_token_and_a_read_token_reads_but_never_acts(make_pipeline, scp):
    pipeline = make_pipeline(
        destinations=[dicom_destination("pacs", scp.port, scp.aet)],
        routes=[],
        retry={"read_tokens": {"auditor": READ_TOKEN}},
    )
    await pipeline.start("retry")
    jobs = [
        parked_job(1, "pacs", patient_id=PATIENT, patient_name=NAME, last_error="-1+1 refused"),
        parked_job(2, "pacs", patient_id="@SUM(A1)"),
    ]
    await fill_parked(pipeline.config.amqp.url, PREFIX, jobs)
    await pipeline.wait_parked(2, timeout=40)

    # Without a token, or with a wrong one: 401, and not a byte of patient data
    for path in READS:
        for token in (None, "wrong-token-0123456789"):
            status, text = await raw(pipeline, "GET", path, token)
            assert status == 401, (path, token, text)
            assert PATIENT not in text and "1.2.826" not in text

    # A read token reads everything: JSON and CSV with the patient's name
    for path in READS:
        status, text = await raw(pipeline, "GET", path, READ_TOKEN)
        assert status == 200, (path, text)
    status, body = await pipeline.admin("GET", f"/api/parked?patient={PATIENT}", token=READ_TOKEN)
    [item] = body["items"]
    assert (item["patient_id"], item["patient_name"]) == (PATIENT, NAME)

    # ... and the CSV's cells that a spreadsheet would run as formulas are escaped
    status, text = await raw(pipeline, "GET", "/api/parked?format=csv", READ_TOKEN)
    rows = list(csv.DictReader(io.StringIO(text)))
    mine = next(r for r in rows if r["patient_id"] == PATIENT)
    assert mine["patient_name"] == "'" + NAME and mine["reason"] == "'-1+1 refused"
    assert any(r["patient_id"] == "'@SUM(A1)" for r in rows)

    # Every state change answers 403 to the read token, and nothing changes
    for path, body in ACTIONS:
        status, answer = await pipeline.admin("POST", path, body, token=READ_TOKEN)
        assert status == 403 and "may only read" in answer["error"], (path, answer)
    assert (await pipeline.parked())["total"] == 2
    _, queues = await pipeline.admin("GET", "/api/queues", token=READ_TOKEN)
    assert queues["destinations"][0]["state"] != "paused"
    _, audit = await pipeline.admin("GET", "/api/audit", token=READ_TOKEN)
    assert audit["items"] == []

    # The admin token acts, and the audit log names it
    status, _ = await pipeline.admin("POST", "/api/parked/delete", {"patient": PATIENT})
    assert status == 200
    _, audit = await pipeline.admin("GET", "/api/audit", token=READ_TOKEN)
    assert [(e["who"], e["action"], e["count"]) for e in audit["items"]] == [("admin", "delete", 1)]


async def test_ingest_does_not_serve_post_api_send(make_pipeline, scp):
    pipeline = make_pipeline(destinations=[dicom_destination("pacs", scp.port, scp.aet)])
    await pipeline.start("ingest")
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            pipeline.url("ingest", "/api/send"),
            json={"destination": "pacs", "resources": ["0123-abcd"]},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as response,
    ):
        assert response.status == 410
        assert "retry service's admin API" in (await response.json())["error"]


def test_a_loopback_admin_api_without_a_token_needs_allow_anonymous(tmp_path):
    config = tmp_path / "open.toml"
    config.write_text(f'[retry]\nlisten = "127.0.0.1:{free_port()}"\n')
    result = sendqueue("retry", "--config", str(config))
    assert result.returncode == 2
    assert "set [retry] allow_anonymous = true" in result.stderr
    assert "admin_token" in result.stderr  # ... or where a token goes


async def test_anonymous_mode_on_loopback_still_refuses_cross_site_posts(make_pipeline, scp):
    pipeline = make_pipeline(
        destinations=[dicom_destination("pacs", scp.port, scp.aet)],
        retry={"admin_token": "", "allow_anonymous": True},
    )
    await pipeline.start("retry")
    status, who = await pipeline.admin("GET", "/api/whoami", token=None)
    assert (status, who["name"], who["scope"]) == (200, "anonymous", "admin")
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            pipeline.url("retry", "/api/destinations/pacs/pause"),
            data="{}",
            headers={"Content-Type": "text/plain"},
        ) as response,
    ):
        assert response.status == 415
    status, _ = await pipeline.admin("POST", "/api/destinations/pacs/pause", token=None)
    assert status == 200
    _, audit = await pipeline.admin("GET", "/api/audit", token=None)
    assert audit["items"][0]["who"] == "anonymous"


async def test_the_admin_listen_over_tls(make_pipeline, scp, tmp_path):
    if not openssl_available():
        unavailable("openssl not installed")
    pki = await asyncio.to_thread(make_pki, tmp_path / "pki")
    pipeline = make_pipeline(
        destinations=[dicom_destination("pacs", scp.port, scp.aet)],
        retry={"tls_cert": str(pki.server_cert), "tls_key": str(pki.server_key)},
    )
    await pipeline.start("retry", wait_healthy=False)
    listen = pipeline.data["retry"]["listen"]

    # `sendqueue healthz` and the admin commands reach it (the config's certificate trusted)
    async def healthz() -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(sendqueue, "healthz", "--listen", listen)

    result = await wait_for(healthz, lambda r: r.returncode == 0, 30, interval=0.5)
    assert "ok" in result.stdout
    status = await asyncio.to_thread(
        sendqueue, "status", "--config", str(pipeline.config_path), "--json"
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["destinations"][0]["name"] == "pacs"

    # Plain HTTP gets no answer; HTTPS does
    with pytest.raises(aiohttp.ClientError):
        await raw(pipeline, "GET", "/api/whoami", ADMIN_TOKEN)
    https = "https" + pipeline.url("retry", "/api/whoami").removeprefix("http")
    client = ssl.create_default_context(cafile=str(pki.ca))
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            https, ssl=client, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        ) as response,
    ):
        assert response.status == 200 and (await response.json())["scope"] == "admin"
    # And its certificate's expiry is a metric, which SendqueueCertificateExpiring reads
    metrics = await asyncio.to_thread(
        urllib.request.urlopen, https.replace("/api/whoami", "/metrics"), context=client
    )
    assert re.search(
        r'sendqueue_tls_cert_expiry_timestamp_seconds\{cert="admin-listen",service="retry",'
        r'subject="[^"]*"\} \d',
        metrics.read().decode(),
    )
