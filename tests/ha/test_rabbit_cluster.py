"""Forwarding on a 3-node RabbitMQ cluster of the test's own while one node dies and returns."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Pipeline, dicom_destination, wait_received
from tests.support.availability import unavailable
from tests.support.dicom_factory import make_study, sop_instance_uid
from tests.support.rabbit_cluster import RabbitCluster, cluster_available

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RabbitCluster]:
    if not cluster_available():
        unavailable("rabbitmq-server and epmd are needed for a cluster of the test's own")
    started = RabbitCluster(tmp_path / "cluster")
    try:
        started.start()
        yield started
    finally:
        started.stop()


async def test_forwarding_goes_on_while_a_node_of_the_cluster_is_killed_and_restarted(
    cluster, orthanc, scp, tmp_path
):
    # Given the three services on a URL listing the three nodes (the first one first)
    pipeline = Pipeline(
        amqp_url=cluster.url,
        orthanc=orthanc,
        tmp=tmp_path,
        destinations=[dicom_destination("pacs", scp.port, scp.aet)],
    )
    try:
        await pipeline.start(wait_healthy=True)
        before, during, after = make_study(15), make_study(15), make_study(15)
        for data in before:
            orthanc.upload(data)
        await wait_received(scp, 5, timeout=60)
        # When the node every service is connected to is killed -9 mid-stream
        first = cluster.nodes[0]
        await asyncio.to_thread(first.kill)
        for data in during:
            orthanc.upload(data)
        # Then forwarding goes on through the other nodes, and no service exits
        sent = before + during
        assert await wait_received(scp, len(sent), timeout=180) == set(map(sop_instance_uid, sent))
        pipeline.check_running()
        # And when the node comes back, nothing changes
        await asyncio.to_thread(first.start)
        await asyncio.to_thread(cluster.wait_running, cluster.nodes)
        for data in after:
            orthanc.upload(data)
        everything = before + during + after
        assert await wait_received(scp, len(everything), timeout=180) == set(
            map(sop_instance_uid, everything)
        )
        pipeline.check_running()
        assert (await pipeline.parked())["total"] == 0
    finally:
        await pipeline.stop()
