"""Several sender processes: each says what their concurrency adds up to."""

from __future__ import annotations

import logging

import pytest

from sendqueue.services.sender.fleet import warn_about_fleet
from sendqueue.shared.amqp import connect
from sendqueue.shared.topology import Names
from tests.integration.harness import PREFIX, dicom_destination

pytestmark = pytest.mark.timeout(120)


async def test_a_second_sender_says_how_many_sends_all_of_them_may_run(make_pipeline, scp, caplog):
    # Given one sender consuming a destination with concurrency 3
    pipeline = make_pipeline(
        destinations=[dicom_destination("pacs", scp.port, scp.aet, concurrency=3)]
    )
    await pipeline.start("sender")
    # When another sender process starts on the same config
    connection = await connect(pipeline.config.amqp.url, "test-fleet")
    async with connection:
        with caplog.at_level(logging.WARNING):
            found = await warn_about_fleet(connection, Names(PREFIX), pipeline.config.destinations)
    # Then it finds the first one, and says the total is 2 x 3
    assert found == {"pacs": 1}
    assert "up to 6 sends run at once against this destination" in caplog.text
