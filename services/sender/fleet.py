"""Several sender processes: what their `concurrency` adds up to, said at start-up.

`concurrency` is per process: each sender sends up to C jobs of a destination at once
(and holds C more ready: its work queue's prefetch is 2C) over up to C associations or
HTTP connections, so
N senders open up to N * C. RabbitMQ cannot cap the unacknowledged messages of a quorum
queue across consumers (a global prefetch is per channel, and quorum queues do not
support it), so no broker setting enforces a cluster-wide cap: size `concurrency` as
what the destination accepts divided by the number of sender processes. Each sender
counts the consumers its work queues already have and says what the total comes to.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from aio_pika.abc import AbstractRobustConnection

from sendqueue.shared.destination_config import DestinationConfig
from sendqueue.shared.topology import Names

log = logging.getLogger(__name__)


async def other_consumers(
    connection: AbstractRobustConnection, names: Names, destination: str
) -> int:
    """Consumers of the destination's work queue before this process's (its own queue
    is declared by now: prepare_bus ran)."""
    async with connection.channel() as channel:
        queue = await channel.declare_queue(names.work_queue(destination), passive=True)
        return int(queue.declaration_result.consumer_count or 0)


async def warn_about_fleet(
    connection: AbstractRobustConnection,
    names: Names,
    destinations: Iterable[DestinationConfig],
) -> dict[str, int]:
    """Logs, per destination, the associations all senders may open together; returns
    the number of other consumers found per destination."""
    found: dict[str, int] = {}
    for destination in destinations:
        others = await other_consumers(connection, names, destination.name)
        found[destination.name] = others
        if others:
            log.warning(
                "%s: %d other consumer(s) already take jobs from its queue (other sender"
                " processes): concurrency = %d is per process, so up to %d sends run at"
                " once against this destination; lower concurrency if it accepts fewer",
                destination.name,
                others,
                destination.concurrency,
                (others + 1) * destination.concurrency,
            )
    return found
