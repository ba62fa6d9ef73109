"""The ledger of a scenario: where every SOPInstanceUID of the workload ended up.

Read once every service has stopped: the receiver's C-STOREs say what was delivered (and
how often), and every queue of the scenario's vhost is drained, so that each remaining job
copy is seen: in the parking queue with its reason, or still waiting somewhere. An
instance that is neither at the destination, nor parked with a reason, nor waiting in a
queue is lost.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import msgspec

from sendqueue.services.retry.parking.items import item_from_message
from sendqueue.shared.schemas import Failure, SendJob, decode_bus_message
from tests.faults.workload import Plan
from tests.support import rabbit
from tests.support.scp import is_success


@dataclass
class QueueContents:
    """What the vhost's queues still hold, by SOPInstanceUID."""

    #: uid -> (reason, reason class) of each of its parked copies.
    parked: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    #: uid -> copies still on their way (work, delay, failed, unroutable queues).
    waiting: Counter[str] = field(default_factory=Counter)
    undecodable: int = 0


@dataclass(frozen=True)
class Figures:
    scenario: str
    instances: int
    delivered: int
    parked: int
    #: Parked, though the peer would have stored them: attempts burned by the fault.
    parked_unplanned: int
    #: Successful C-STOREs beyond the first of an instance, plus job copies left over
    #: (waiting, or parked though delivered): each is one more send than needed.
    duplicates: int
    lost: int
    #: Neither delivered nor parked, but still in a queue: not lost, not settled either.
    waiting: int
    parked_without_reason: int
    cstores: int
    seconds: float
    faults: dict[str, int]
    duplicate_bound: int = 0
    exited: tuple[str, ...] = ()
    hung: tuple[str, ...] = ()
    parked_reasons: dict[str, int] = field(default_factory=dict)
    lost_uids: tuple[str, ...] = ()
    #: The sender's failed attempts by reason class (from its log, kept across kills).
    failed_attempts: dict[str, int] = field(default_factory=dict)

    @property
    def unplanned_attempts(self) -> int:
        """Failed attempts other than the peer's planned refusals."""
        return sum(n for c, n in self.failed_attempts.items() if c not in PLANNED_CLASSES)

    def row(self) -> str:
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items()) if v)
        return (
            f"| {self.scenario} | {self.instances} | {self.delivered} | {self.parked}"
            f" ({self.parked_unplanned} unplanned) | {self.duplicates} (bound"
            f" {self.duplicate_bound}) | {self.lost} | {self.unplanned_attempts} |"
            f" {self.seconds:.0f} | {faults} |"
        )


#: The reason classes of the workload's planned refusals (0xA700 once, 0xA900 for good).
PLANNED_CLASSES = frozenset({"dimse-a7xx", "dimse-a9xx"})
_FAILED = re.compile(r"event=failed .*reason_class=(\S+)")


def failed_attempts(sender_log: str) -> dict[str, int]:
    """Failed attempts by reason class, from the sender's text log lines."""
    return dict(Counter(m.group(1) for m in _FAILED.finditer(sender_log)))


TABLE_HEADER = (
    "| scenario | instances | delivered | parked | duplicates | lost | failed attempts"
    " | s | faults |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


async def drain_vhost(amqp_url: str, vhost: str) -> QueueContents:
    """Consume every job-carrying queue of the vhost to the end (services stopped)."""
    contents = QueueContents()
    names = [q["name"] for q in rabbit.list_queues(vhost) if _carries_jobs(q["name"])]
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        for name in names:
            queue = await channel.declare_queue(name, passive=True)
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                _account(contents, name, message)
    return contents


def _carries_jobs(queue: str) -> bool:
    """Work, delay, failed, parked and unroutable queues; not the operator link, the
    leases (single active consumer: no basic.get), the registers, or the capture and
    delivery records (no jobs in them)."""
    _prefix, _, rest = queue.partition(".")
    return rest.startswith(("work.", "delay.")) or rest in {"failed", "parked", "unroutable"}


def _account(contents: QueueContents, queue: str, message: Any) -> None:
    if queue.endswith(".parked"):
        item = item_from_message(message)
        if item.sop_instance_uid:
            contents.parked.setdefault(item.sop_instance_uid, []).append(
                (item.reason, item.reason_class)
            )
        else:
            contents.undecodable += 1
        return
    try:
        decoded = decode_bus_message(message.body)
    except msgspec.DecodeError:
        contents.undecodable += 1
        return
    job: SendJob | None = decoded.job if isinstance(decoded, Failure) else decoded
    if job is None:
        contents.undecodable += 1
    else:
        contents.waiting[job.sop_instance_uid] += 1


def reckon(
    scenario: str,
    plans: dict[str, Plan],
    received: list[tuple[str, int]],
    contents: QueueContents,
    *,
    started: float,
    faults: dict[str, int],
    **extra: Any,
) -> Figures:
    stores = Counter(uid for uid, status in received if is_success(status))
    delivered = {uid for uid in plans if stores[uid]}
    parked_with_reason = {
        uid
        for uid, copies in contents.parked.items()
        if uid in plans and any(reason for reason, _ in copies)
    }
    parked = parked_with_reason - delivered
    waiting = {uid for uid in plans if contents.waiting[uid]} - delivered - parked
    lost = set(plans) - delivered - parked - waiting
    extra_stores = sum(n - 1 for n in stores.values() if n > 1)
    leftover = sum(n for uid, n in contents.waiting.items() if uid in delivered | parked)
    extra_parked = sum(
        len(reasons) - (0 if uid in delivered else 1) for uid, reasons in contents.parked.items()
    )
    reasons: Counter[str] = Counter()
    for uid in parked:
        reasons[contents.parked[uid][0][1] or "unknown"] += 1
    return Figures(
        scenario=scenario,
        instances=len(plans),
        delivered=len(delivered),
        parked=len(parked),
        parked_unplanned=sum(1 for uid in parked if plans[uid] is not Plan.REFUSED_FOR_GOOD),
        duplicates=extra_stores + leftover + extra_parked,
        lost=len(lost),
        waiting=len(waiting),
        parked_without_reason=len(set(contents.parked) - parked_with_reason - delivered),
        cstores=len(received),
        seconds=time.monotonic() - started,
        faults=dict(faults),
        parked_reasons=dict(reasons),
        lost_uids=tuple(sorted(lost)[:10]),
        **extra,
    )
