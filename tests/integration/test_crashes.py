"""kill -9 and SIGTERM: nothing is lost across crashes and restarts."""

from __future__ import annotations

import asyncio

from tests.integration.harness import dicom_destination, wait_received
from tests.support import rabbit
from tests.support.dicom_factory import make_study, sop_instance_uid


async def test_kill_9_of_the_sender_mid_transfer_loses_nothing(make_pipeline, orthanc, scp):
    # Given a slow SCP, so that sends are in flight when the sender dies
    scp.store_delay = 0.05
    pipeline = make_pipeline(destinations=[dicom_destination("pacs", scp.port, scp.aet)])
    await pipeline.start("ingest", "retry")
    pipeline.spawn("sender")
    study = make_study(40)
    for data in study:
        orthanc.upload(data)
    await wait_received(scp, 5, timeout=60)
    # When the sender is killed mid-transfer and started again
    pipeline.kill("sender")
    assert len(scp.stored_uids()) < 40
    pipeline.spawn("sender")
    # Then every instance is delivered (duplicates allowed), nothing parked
    assert await wait_received(scp, 40, timeout=90) == {sop_instance_uid(d) for d in study}
    assert (await pipeline.parked())["total"] == 0
    # And a SIGTERM stops it cleanly
    assert pipeline.terminate("sender") == 0


async def test_kill_9_of_ingest_then_more_instances_all_delivered(make_pipeline, orthanc, scp):
    pipeline = make_pipeline(destinations=[dicom_destination("pacs", scp.port, scp.aet)])
    await pipeline.start("sender", "retry")
    pipeline.spawn("ingest")
    first, second = make_study(20), make_study(20)
    for data in first:
        orthanc.upload(data)
    await wait_received(scp, 1, timeout=60)
    pipeline.kill("ingest")
    for data in second:
        orthanc.upload(data)
    await asyncio.sleep(0.5)
    pipeline.spawn("ingest")
    expected = {sop_instance_uid(d) for d in first + second}
    assert await wait_received(scp, 40, timeout=90) == expected
    assert (await pipeline.parked())["total"] == 0
    assert pipeline.terminate("ingest") == 0


async def test_a_transfer_aborted_every_time_is_retried_then_parked_with_the_reason(
    make_pipeline, orthanc
):
    # Given a DCMTK storescp that aborts every association in the middle of the transfer
    from tests.support.scp import StorescpProcess

    with StorescpProcess(extra_args=("--abort-during",)) as broken:
        pipeline = make_pipeline(
            destinations=[dicom_destination("pacs", broken.port, broken.aet)],
            retry={"max_attempts": 3, "delays": ["200ms"]},
        )
        await pipeline.start()
        [data] = make_study(1)
        orthanc.upload(data)
        # Then it is tried max_attempts times, and parked saying what happened
        [item] = (await pipeline.wait_parked(1))["items"]
        assert item["attempts"] == 3 and item["reason_class"] == "no-response"
        assert "aborted or closed during the transfer" in item["reason"]
        assert broken.received_sop_uids() == set()
        await pipeline.stop()


async def test_broker_connections_closed_mid_transfer_lose_nothing(make_pipeline, orthanc, scp):
    # Given the three services as processes, with sends in flight to a slow SCP
    scp.store_delay = 0.1
    pipeline = make_pipeline(destinations=[dicom_destination("pacs", scp.port, scp.aet)])
    for service in ("retry", "sender", "ingest"):
        pipeline.spawn(service)
    await pipeline.wait_healthy("retry", "sender", "ingest", timeout=60)
    # (ingest 2: its own and its lease's; sender 2: consuming and publishing; retry 5: the
    # same two, its registers', its lease's and the one it waits on as a standby)
    connections = await asyncio.to_thread(rabbit.listed_connections, pipeline.vhost, 9)
    first = make_study(40)
    for data in first:
        orthanc.upload(data)
    await wait_received(scp, 5, timeout=60)
    # When RabbitMQ drops every connection of the services
    await asyncio.to_thread(_close_all, connections)
    assert len(scp.stored_uids()) < 40
    # Then they reconnect by themselves: everything arrives, nothing is parked
    second = make_study(10)
    for data in second:
        orthanc.upload(data)
    expected = {sop_instance_uid(d) for d in first + second}
    assert await wait_received(scp, 50, timeout=90) == expected
    assert (await pipeline.parked())["total"] == 0
    for service in ("ingest", "sender", "retry"):
        assert pipeline.terminate(service) == 0, service
        log = (pipeline.tmp / f"{service}.log").read_text()
        assert "connected to RabbitMQ again" in log, service


def _close_all(names: list[str]) -> None:
    """Force-close each; one already gone is fine: a service that loses its lease's
    connection ends its active term and closes its other connections itself."""
    import urllib.error

    for name in names:
        try:
            rabbit.close_connections([name])
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
