"""The `sendqueue` command: check, send, and clear errors for bad config."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.integration.harness import dicom_destination, wait_for, wait_received
from tests.support.dicom_factory import make_study, sop_instance_uid
from tests.support.ports import free_port

ROOT = Path(__file__).parents[2]


def sendqueue(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sendqueue.services.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


async def test_check_reports_each_component_and_fails_on_a_dead_destination(make_pipeline, scp):
    pipeline = make_pipeline(
        destinations=[
            dicom_destination("live", scp.port, scp.aet),
            dicom_destination("dead", free_port(), "NOBODY", connect_timeout="2s"),
        ]
    )
    result = await asyncio.to_thread(sendqueue, "check", "--config", str(pipeline.config_path))
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("ok") and "orthanc" in line for line in lines)
    assert any(line.startswith("ok") and "rabbitmq" in line for line in lines)
    assert any(line.startswith("ok") and "destination live" in line for line in lines)
    assert any(line.startswith("FAIL") and "destination dead" in line for line in lines)
    assert "guest:guest" not in result.stdout  # the AMQP password is masked


async def test_send_queues_a_study_by_its_orthanc_id(make_pipeline, orthanc, scp):
    pipeline = make_pipeline(destinations=[dicom_destination("pacs", scp.port, scp.aet)], routes=[])
    await pipeline.start("sender", "retry")
    study = make_study(4)
    ids = [orthanc.upload(data) for data in study]
    study_id = orthanc.get_json(f"/instances/{ids[0]}/study")["ID"]
    config = str(pipeline.config_path)
    result = await asyncio.to_thread(
        sendqueue, "send", "--config", config, "--to", "pacs", study_id
    )
    assert result.returncode == 0, result.stderr
    assert "queued 4 instance(s) for pacs" in result.stdout
    assert await wait_received(scp, 4) == {sop_instance_uid(d) for d in study}
    unknown = await asyncio.to_thread(
        sendqueue, "send", "--config", config, "--to", "pacs", "no-such-id"
    )
    assert unknown.returncode == 1 and "unknown Orthanc resource" in unknown.stderr


def test_a_broken_config_stops_with_the_bad_key_named(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[retry]\ndelays = ["10 parsecs"]\n')
    result = sendqueue("retry", "--config", str(config))
    assert result.returncode == 2
    assert "$.retry.delays[0]" in result.stderr and "not a duration" in result.stderr
    missing = sendqueue("check", "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "cannot read config file" in missing.stderr


def test_admin_api_refuses_a_public_address_without_a_token(tmp_path):
    config = tmp_path / "open.toml"
    config.write_text('[retry]\nlisten = "0.0.0.0:18199"\n')
    result = sendqueue("retry", "--config", str(config))
    assert result.returncode == 2 and "refusing to expose the admin API" in result.stderr


async def test_two_sender_processes_share_a_destination_queue(make_pipeline, orthanc, scp):
    pipeline = make_pipeline(destinations=[dicom_destination("pacs", scp.port, scp.aet)])
    await pipeline.start("ingest", "retry")
    second = f"127.0.0.1:{free_port()}"
    pipeline.spawn("sender")
    pipeline.spawn("sender", "--listen", second, key="sender-2")
    await pipeline.wait_healthy("sender", second, timeout=60)
    study = make_study(60)
    for data in study:
        orthanc.upload(data)
    assert await wait_received(scp, 60) == {sop_instance_uid(d) for d in study}

    # competing consumers: each process sent part of the study, and nothing twice
    async def sent_by_each() -> list[float]:
        return [
            await pipeline.metric_sum(listen, "sendqueue_jobs_sent_total")
            for listen in ("sender", second)
        ]

    sent = await wait_for(sent_by_each, lambda counts: sum(counts) >= 60, 10)
    assert all(count > 0 for count in sent) and sum(sent) == 60, sent
    assert (await pipeline.parked())["total"] == 0


async def test_a_second_ingest_or_retry_on_one_config_waits_as_a_standby(make_pipeline, scp):
    # Given ingest and retry running
    pipeline = make_pipeline(destinations=[dicom_destination("pacs", scp.port, scp.aet)])
    await pipeline.start("ingest", "retry")
    for service in ("ingest", "retry"):
        # When a second process of each starts on the same config and state_dir
        listen = f"127.0.0.1:{free_port()}"
        pipeline.spawn(service, "--listen", listen, key=listen)
        # Then it waits as a standby (tests/ha/ has the take-overs), disturbing nothing
        active = await wait_for(
            lambda listen=listen, service=service: _metric_or_none(
                pipeline, listen, f"sendqueue_{service}_active"
            ),
            lambda value: value is not None,
            timeout=60,
        )
        assert active == 0
        assert pipeline.terminate(listen) == 0
    pipeline.check_running()
    assert await pipeline.metric_sum("ingest", "sendqueue_ingest_active") == 1
    assert await pipeline.metric_sum("retry", "sendqueue_retry_active") == 1


async def _metric_or_none(pipeline: Any, listen: str, name: str) -> float | None:
    try:
        samples = await pipeline.metrics(listen)
    except OSError:
        return None  # not listening yet
    values = [value for (sample, _), value in samples.items() if sample == name]
    return values[0] if values else None


async def test_a_work_exchange_declared_differently_stops_the_service_with_a_clear_error(
    make_pipeline, scp
):
    import aio_pika

    pipeline = make_pipeline(destinations=[dicom_destination("pacs", scp.port, scp.aet)])
    # Given an exchange of the same name made by something else (no alternate exchange)
    connection = await aio_pika.connect(pipeline.config.amqp.url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_exchange(
            f"{pipeline.config.amqp.prefix}.work", aio_pika.ExchangeType.DIRECT, durable=True
        )
    result = await asyncio.to_thread(
        sendqueue, "sender", "--config", str(pipeline.config_path), timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert "declared differently" in result.stderr and "prefix" in result.stderr
