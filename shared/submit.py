"""Queue explicit Orthanc resources for a destination (POST /api/send, `sendqueue send`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sendqueue.shared.amqp import Publisher
from sendqueue.shared.errors import InstanceNotFound, UnknownResources
from sendqueue.shared.jobs import make_job, publish_jobs
from sendqueue.shared.resolver import InstanceInfo, Resolver
from sendqueue.shared.schemas import SendJob
from sendqueue.shared.topology import Names


async def queue_resources(
    *,
    resolver: Resolver,
    publisher: Publisher,
    names: Names,
    on_queued: Callable[[SendJob], None],
    destination: str,
    resource_ids: Sequence[str],
) -> int:
    """All-or-nothing on lookup: any unknown ID queues nothing. Returns jobs queued."""
    instances: dict[str, InstanceInfo] = {}
    unknown: list[str] = []
    for resource_id in dict.fromkeys(resource_ids):
        try:
            for info in await resolver.expand(resource_id):
                instances[info.orthanc_id] = info
        except InstanceNotFound:
            unknown.append(resource_id)
    if unknown:
        raise UnknownResources(unknown)
    jobs = [make_job(info, destination, source="api") for info in instances.values()]
    await publish_jobs(publisher, names, jobs, on_queued)
    return len(jobs)
