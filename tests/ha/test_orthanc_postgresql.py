"""A source Orthanc whose index is in PostgreSQL, with uploads in parallel: ingest misses
no change."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Pipeline, dicom_destination, wait_received
from tests.support.availability import unavailable
from tests.support.dicom_factory import make_study, sop_instance_uid
from tests.support.orthanc import OrthancProcess, orthanc_available
from tests.support.postgres import PostgresProcess, orthanc_postgresql_plugin, postgres_available

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

UPLOADERS = 6
PER_UPLOADER = 30


@pytest.fixture
def orthanc_on_postgresql() -> Iterator[OrthancProcess]:
    plugin = orthanc_postgresql_plugin()
    if not (orthanc_available() and postgres_available() and plugin):
        unavailable("Orthanc, PostgreSQL and Debian's orthanc-postgresql are needed")
    assert plugin is not None
    database = PostgresProcess()
    try:
        database.start()
        with OrthancProcess(
            plugins=[plugin], extra_config=database.orthanc_config(), start_timeout=60
        ) as orthanc:
            backend = orthanc.get_json("/system")["DatabaseBackendPlugin"]
            assert "PostgreSQL" in str(backend), backend
            yield orthanc
    finally:
        database.stop()
        database.remove()


async def test_ingest_misses_no_change_of_an_orthanc_on_postgresql_under_parallel_uploads(
    orthanc_on_postgresql, scp, amqp_url, tmp_path: Path
):
    # Given the pipeline following an Orthanc whose index is in PostgreSQL, reading its
    # changes in small pages while they are being written
    orthanc = orthanc_on_postgresql
    pipeline = Pipeline(
        amqp_url=amqp_url,
        orthanc=orthanc,
        tmp=tmp_path,
        destinations=[dicom_destination("pacs", scp.port, scp.aet)],
        ingest={"batch_size": 5, "poll_interval": "50ms"},
    )
    try:
        await pipeline.start()
        # When several clients upload at once (concurrent transactions in PostgreSQL)
        batches = [make_study(PER_UPLOADER) for _ in range(UPLOADERS)]

        def upload(batch: list[bytes]) -> None:
            for data in batch:
                orthanc.upload(data)

        await asyncio.gather(*(asyncio.to_thread(upload, batch) for batch in batches))
        # Then every instance reaches the destination
        expected = {sop_instance_uid(d) for batch in batches for d in batch}
        assert len(orthanc.instances()) == len(expected)
        assert await wait_received(scp, len(expected), timeout=180) == expected
        assert (await pipeline.parked())["total"] == 0
    finally:
        await pipeline.stop()
