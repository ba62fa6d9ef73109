"""Queue arguments per RabbitMQ version: the parking queue never has a delivery limit."""

from __future__ import annotations

from types import SimpleNamespace

from sendqueue.shared.topology import (
    DELIVERY_LIMIT,
    Names,
    broker_major,
    limited_arguments,
    parked_arguments,
)

NAMES = Names("sq")


def _connection(version: object) -> object:
    properties = {"version": version} if version is not None else {}
    return SimpleNamespace(
        transport=SimpleNamespace(connection=SimpleNamespace(server_properties=properties))
    )


def test_the_parking_queue_has_no_limit_on_any_version():
    # 3.x: no argument (3.x has no default limit, and reads -1 as "past it at once")
    for major in (None, 3):
        assert "x-delivery-limit" not in parked_arguments(NAMES, major)
    # 4.x: -1, or the default of 20 would dead-letter parked jobs to the work exchange
    for major in (4, 5):
        assert parked_arguments(NAMES, major)["x-delivery-limit"] == -1
    assert parked_arguments(NAMES, 4)["x-dead-letter-exchange"] == NAMES.work_exchange


def test_a_limited_queue_dead_letters_at_least_once_past_the_limit():
    args = limited_arguments(NAMES.failed_exchange)
    assert args == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "sq.failed",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        "x-delivery-limit": DELIVERY_LIMIT,
    }


def test_the_broker_version_is_read_from_the_connection():
    assert broker_major(_connection(b"4.1.2")) == 4
    assert broker_major(_connection("3.10.8")) == 3
    assert broker_major(_connection(None)) is None
    assert broker_major(_connection("nonsense")) is None
    assert broker_major(object()) is None
