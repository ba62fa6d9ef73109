"""What operators do in the RabbitMQ management UI, done through the HTTP API the UI uses.

docs/rabbitmq-ui.md tells them how: read a parked message's headers ("Get messages"),
move parked messages back to the work exchange with a shovel, purge the parked queue.
sendqueue must follow each: moved jobs start afresh and are delivered, and the admin API's
parked list (an index beside the queue) catches up with what the queue really holds.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

from tests.integration.harness import PREFIX, dicom_destination, wait_for, wait_received
from tests.support import rabbit
from tests.support.dicom_factory import make_study, sop_instance_uid
from tests.support.scp import always, fail_for

PARKED = f"{PREFIX}.parked"
WORK_EXCHANGE = f"{PREFIX}.work"
#: The retry service compares its index with the queue every 15 s, then rebuilds it.
INDEX_CATCH_UP = 45.0


def management(method: str, path: str, body: Any = None) -> Any:
    # The same authenticated JSON call the vhost fixtures use.
    return rabbit.management_request(method, path, body)


def move_messages_shovel(vhost: str, name: str) -> dict[str, Any]:
    """The parameter the UI's shovel forms PUT: the queue page's "Move messages" fields
    (on-confirm, delete after the initial queue length), with the work exchange as the
    destination so each message keeps its routing key: its destination's name."""
    local = f"amqp:///{quote(vhost, safe='')}"
    return {
        "component": "shovel",
        "vhost": vhost,
        "name": name,
        "value": {
            "src-protocol": "amqp091",
            "src-uri": local,
            "src-queue": PARKED,
            "src-prefetch-count": 1000,
            "src-delete-after": "queue-length",
            "dest-protocol": "amqp091",
            "dest-uri": local,
            "dest-exchange": WORK_EXCHANGE,
            "dest-add-forward-headers": False,
            "ack-mode": "on-confirm",
        },
    }


async def park(make_pipeline, orthanc, scp, count: int):
    study = make_study(count, patient_id="PAT-UI")
    refused = {sop_instance_uid(d) for d in study}
    scp.status_for = fail_for(refused, 0xA900)
    pipeline = make_pipeline(destinations=[dicom_destination("pacs", scp.port, scp.aet)])
    await pipeline.start()
    for data in study:
        orthanc.upload(data)
    await pipeline.wait_parked(count)
    return pipeline, refused


async def parked_total(pipeline) -> int:
    return int((await pipeline.parked())["total"])


async def test_parked_messages_show_readable_headers_and_a_shovel_moves_them_back(
    make_pipeline, orthanc, scp
):
    # Given 4 instances the PACS refused, parked
    pipeline, refused = await park(make_pipeline, orthanc, scp, 4)
    vhost = pipeline.vhost
    vh, queue = quote(vhost, safe=""), quote(PARKED, safe="")

    # "Get messages" (requeue: yes) shows who, what and why in the headers
    messages = management(
        "POST",
        f"/api/queues/{vh}/{queue}/get",
        {"count": 10, "ackmode": "ack_requeue_true", "encoding": "auto", "truncate": 50000},
    )
    assert len(messages) == 4
    for message in messages:
        headers = message["properties"]["headers"]
        assert message["routing_key"] == "pacs" and headers["destination"] == "pacs"
        assert headers["sop_instance_uid"] in refused
        assert headers["orthanc_id"] and headers["study_instance_uid"]
        assert headers["attempts"] == 1 and "0xA900" in headers["reason"]
    assert await parked_total(pipeline) == 4  # looking did not take anything away

    # When the PACS is fixed and a shovel moves the parked queue to the work exchange
    scp.status_for = always(0x0000)
    name = f"Move from {PARKED}"
    management(
        "PUT",
        f"/api/parameters/shovel/{vh}/{quote(name, safe='')}",
        move_messages_shovel(vhost, name),
    )

    # Then every job is delivered, as a fresh start (one refusal, then one success each)
    assert await wait_received(scp, 4, timeout=30) == refused
    assert all(scp.receive_count(uid) == 2 for uid in refused)
    # the shovel removed itself after moving what the queue held
    await wait_for(
        lambda: asyncio.to_thread(management, "GET", f"/api/parameters/shovel/{vh}"),
        lambda shovels: shovels == [],
        15,
    )
    # and the admin API's parked list follows the queue
    await wait_for(lambda: parked_total(pipeline), lambda total: total == 0, INDEX_CATCH_UP, 1.0)
    status, queues = await pipeline.admin("GET", "/api/queues")
    assert status == 200 and queues["parked"] == 0
    await asyncio.sleep(1.0)  # nothing comes back: they were not parked again
    assert await parked_total(pipeline) == 0


async def test_purging_the_parked_queue_empties_the_admin_list(make_pipeline, orthanc, scp):
    # Given 3 parked jobs
    pipeline, _refused = await park(make_pipeline, orthanc, scp, 3)
    vh, queue = quote(pipeline.vhost, safe=""), quote(PARKED, safe="")

    # When the queue is purged ("Purge Messages" on the queue page)
    management("DELETE", f"/api/queues/{vh}/{queue}/contents")

    # Then the admin API's list and counts follow, and nothing was sent
    await wait_for(lambda: parked_total(pipeline), lambda total: total == 0, INDEX_CATCH_UP, 1.0)
    status, queues = await pipeline.admin("GET", "/api/queues")
    assert status == 200 and queues["parked"] == 0
    assert scp.stored_uids() == set()
    counts = rabbit.queue_counts(pipeline.vhost, PARKED, exact=True)
    assert counts == rabbit.QueueCounts(ready=0, unacked=0)
