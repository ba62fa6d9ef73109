"""`[amqp] url` with several nodes, and the aio-pika hook the node rotation relies on."""

from __future__ import annotations

import aio_pika
import pytest

from sendqueue.shared.amqp import ClusterConnection, broker_urls


def test_the_nodes_of_a_url_are_taken_in_order_without_blanks():
    assert broker_urls(" amqp://a/v ,amqp://b/v,, amqp://c/v ") == [
        "amqp://a/v",
        "amqp://b/v",
        "amqp://c/v",
    ]
    assert broker_urls("amqp://only/") == ["amqp://only/"]
    with pytest.raises(ValueError, match="no broker"):
        broker_urls("")


def test_aio_pika_still_connects_through_the_method_the_rotation_overrides():
    # ClusterConnection overrides aio-pika's private per-attempt connect: if an upgrade
    # renames it, the override would silently never run (and the next node never tried).
    hook = "_RobustConnection__connect_transport"
    assert hook in vars(aio_pika.RobustConnection)
    assert hook in vars(ClusterConnection)
