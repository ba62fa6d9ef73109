"""Small in-memory fakes of what the decision centres talk to: RabbitMQ (a confirming
publisher, delivered messages, queues, channels, a connection), a destination and Orthanc.

Each fake records what was done to it and can be told to fail the way the real one does.
They are handed to the code under test in place of the aio-pika, destination and Orthanc
objects, so they copy only the parts of those interfaces that sendqueue uses.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiormq.exceptions import ChannelInvalidStateError, DeliveryError
from pamqp.commands import Basic

from sendqueue.shared.config import DicomDestinationConfig
from sendqueue.shared.errors import (
    InstanceNotFound,
    NotConfirmed,
    PermanentError,
    SourceUnavailable,
    SpoolUnavailable,
    TransientError,
)

#: One line per thing done, shared by several fakes to show the order things happened in.
Journal = list[str]
Callback = Callable[["FakeMessage"], Awaitable[None]]


if TYPE_CHECKING:
    from sendqueue.services.sender.consumer import DestinationConsumer


def broker_nack() -> NotConfirmed:
    """What a publish raises when the broker refuses to confirm it."""
    return NotConfirmed(
        f"RabbitMQ did not confirm: {DeliveryError(None, Basic.Nack(delivery_tag=1))!r}"
    )


async def eventually(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    """Wait until `condition()` holds; fail the test after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


# -- RabbitMQ -------------------------------------------------------------------------------


class FakeMessage:
    """A delivered message (aio-pika's AbstractIncomingMessage): body, headers, settling."""

    def __init__(
        self,
        body: bytes,
        *,
        headers: dict[str, Any] | None = None,
        routing_key: str = "",
        message_id: str | None = None,
        timestamp: datetime | None = None,
        journal: Journal | None = None,
    ) -> None:
        self.body = body
        self.headers = headers or {}
        self.routing_key = routing_key
        self.message_id = message_id
        self.timestamp = timestamp
        self.journal = journal if journal is not None else []
        #: How it was settled: "ack", "nack requeue", "reject", ...
        self.outcomes: list[str] = []
        #: Raised by ack, nack and reject (a channel that died meanwhile).
        self.settle_error: BaseException | None = None
        #: Awaited before an ack takes effect (to look at the world at that moment).
        self.on_ack: Callable[[], Awaitable[None]] | None = None
        #: Set by the tag space that delivered it (FakeTags.deliver).
        self.delivery_tag: int | None = None
        self.tags: FakeTags | None = None

    @property
    def settled(self) -> bool:
        return bool(self.outcomes)

    @property
    def channel(self) -> FakeTags:
        """The channel it came on, as aio-pika's: raises once that channel is closed."""
        if self.tags is None or self.tags.is_closed:
            raise dead_channel()
        return self.tags

    async def ack(self, multiple: bool = False) -> None:
        if self.on_ack is not None:
            await self.on_ack()
        if self.tags is None or self.settle_error is not None:
            self._settle("ack")
            return
        tags = self.channel
        for message in tags.settle(self, "ack", multiple=multiple):
            message._settle("ack")
        await tags.written()

    async def nack(self, multiple: bool = False, requeue: bool = True) -> None:
        self._settled_alone("nack", "nack requeue" if requeue else "nack")

    async def reject(self, requeue: bool = False) -> None:
        self._settled_alone("reject", "reject requeue" if requeue else "reject")

    def _settled_alone(self, frame: str, outcome: str) -> None:
        if self.tags is not None and self.settle_error is None:
            self.channel.settle(self, frame, multiple=False)
        self._settle(outcome)

    def _settle(self, outcome: str) -> None:
        if self.settle_error is not None:
            raise self.settle_error
        self.outcomes.append(outcome)
        self.journal.append(outcome)


class FakeTags:
    """The AMQP channel under an aio-pika channel (what `message.channel` is): one space of
    delivery tags, counted from 1, settled as RabbitMQ does. A multiple ack settles every
    unsettled tag up to its own; naming a tag that is not unsettled is the channel error
    RabbitMQ closes the channel with (PRECONDITION_FAILED, unknown delivery tag)."""

    def __init__(self) -> None:
        self.is_closed = False
        self.last_tag = 0
        self.unsettled: dict[int, FakeMessage] = {}
        #: One line per frame: "ack 3", "ack 5 multiple", "nack 4".
        self.frames: list[str] = []
        #: Loop iterations an ack waits after its frame is queued, as aiormq waits for the
        #: frame to be written: the frame takes effect in the order the acks were called.
        self.drain = 0

    def deliver(self, message: FakeMessage) -> None:
        self.last_tag += 1
        message.delivery_tag = self.last_tag
        message.tags = self
        self.unsettled[self.last_tag] = message

    def settle(self, message: FakeMessage, frame: str, *, multiple: bool) -> list[FakeMessage]:
        """The messages a frame ("ack", "nack", "reject") for `message` settles."""
        tag = message.delivery_tag
        assert tag is not None
        if self.unsettled.get(tag) is not message:
            self.is_closed = True
            raise AssertionError(f"PRECONDITION_FAILED - unknown delivery tag {tag}")
        self.frames.append(f"{frame} {tag} multiple" if multiple else f"{frame} {tag}")
        covered = [t for t in self.unsettled if t <= tag] if multiple else [tag]
        return [self.unsettled.pop(t) for t in covered]

    async def written(self) -> None:
        for _ in range(self.drain):
            await asyncio.sleep(0)

    def close(self) -> None:
        """Closed (a connection lost): its unsettled messages go back to the queue."""
        self.is_closed = True


@dataclass(frozen=True)
class Published:
    exchange: str
    routing_key: str
    body: bytes
    headers: dict[str, Any]
    message_id: str | None


class FakePublisher:
    """sendqueue.shared.amqp.Publisher: confirms every publish unless told to refuse.

    A refused publish raises what the real one raises on a broker nack and is not
    recorded. `bind` delivers what is published to an exchange into a FakeQueue.
    """

    def __init__(self, journal: Journal | None = None) -> None:
        self.published: list[Published] = []
        self.journal = journal if journal is not None else []
        #: Called with each publish before it is confirmed or refused.
        self.on_publish: Callable[[Published], None] | None = None
        self._refusals = 0
        self._routes: dict[str, FakeQueue] = {}

    def refuse(self, count: int = 1_000_000) -> None:
        """Refuse the next `count` publishes (default: all of them, as during an alarm)."""
        self._refusals = count

    def confirm(self) -> None:
        """Confirm publishes again."""
        self._refusals = 0

    def bind(self, exchange: str, queue: FakeQueue) -> None:
        self._routes[exchange] = queue

    def to(self, exchange: str) -> list[Published]:
        return [p for p in self.published if p.exchange == exchange]

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        headers: dict[str, Any] | None = None,
        message_id: str | None = None,
        persistent: bool = True,
        mandatory: bool = True,
    ) -> None:
        await asyncio.sleep(0)  # a confirm is awaited: other tasks run meanwhile
        published = Published(exchange, routing_key, body, dict(headers or {}), message_id)
        if self.on_publish is not None:
            self.on_publish(published)
        if self._refusals:
            self._refusals -= 1
            self.journal.append(f"refused {exchange}")
            raise broker_nack()
        self.published.append(published)
        self.journal.append(f"publish {exchange} {routing_key}")
        queue = self._routes.get(exchange)
        if queue is not None:
            queue.put(
                FakeMessage(
                    body,
                    headers=dict(published.headers),
                    routing_key=routing_key,
                    message_id=message_id or uuid.uuid4().hex,
                )
            )


@dataclass(frozen=True)
class FakeExchange:
    name: str


@dataclass(frozen=True)
class DeclareOk:
    message_count: int


class FakeQueue:
    """A queue: consumed by a callback (the sender) or read by an iterator (parking passes).

    Messages an iterator handed out and nobody settled go back to the head of the queue
    when the channel closes, as RabbitMQ returns unacked messages.
    """

    def __init__(self, name: str, journal: Journal | None = None) -> None:
        self.name = name
        self.journal = journal if journal is not None else []
        self.ready: deque[FakeMessage] = deque()
        #: Every message an iterator handed out, in order.
        self.taken: list[FakeMessage] = []
        self.bindings: list[tuple[str, str | None]] = []
        self.consumer: Callback | None = None
        #: What a passive declaration says the queue holds (None: what it really holds).
        self.reported_count: int | None = None
        #: The tag space of the consumer's channel (a new one when it is reopened).
        self.tags = FakeTags()
        self._arrived = asyncio.Event()

    def put(self, message: FakeMessage) -> None:
        self.ready.append(message)
        self._arrived.set()

    @property
    def declaration_result(self) -> DeclareOk:
        count = len(self.ready) if self.reported_count is None else self.reported_count
        return DeclareOk(message_count=count)

    @property
    def dead_lettered(self) -> list[FakeMessage]:
        return [m for m in self.taken if m.outcomes == ["reject"]]

    async def bind(self, exchange: FakeExchange, routing_key: str | None = None) -> None:
        self.bindings.append((exchange.name, routing_key))

    async def consume(self, callback: Callback, **_: Any) -> str:
        self.consumer = callback
        self.journal.append("consume")
        return f"ctag-{uuid.uuid4().hex[:6]}"

    async def cancel(self, consumer_tag: str, **_: Any) -> None:
        self.consumer = None
        self.journal.append("cancel")

    async def deliver(self, message: FakeMessage) -> None:
        """Hand one message to the consumer, as the broker does."""
        assert self.consumer is not None, f"nothing consumes {self.name}"
        self.tags.deliver(message)
        await self.consumer(message)

    def reopen_channel(self) -> FakeTags:
        """The consumer's channel was lost and aio-pika opened a new one: tags from 1."""
        old, self.tags = self.tags, FakeTags()
        old.close()
        return old

    def iterator(self) -> FakeQueueIterator:
        return FakeQueueIterator(self)

    def give_back(self) -> None:
        """The channel closed: what was handed out and not settled is ready again."""
        unsettled = [m for m in self.taken if not m.settled and m not in self.ready]
        self.ready.extendleft(reversed(unsettled))


class FakeQueueIterator:
    def __init__(self, queue: FakeQueue) -> None:
        self._queue = queue

    async def __aenter__(self) -> FakeQueueIterator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def __aiter__(self) -> FakeQueueIterator:
        return self

    async def __anext__(self) -> FakeMessage:
        queue = self._queue
        while not queue.ready:
            queue._arrived.clear()
            await queue._arrived.wait()
        message = queue.ready.popleft()
        queue.taken.append(message)
        return message


class FakeChannel:
    """An aio-pika channel: awaitable and an async context manager, like the real one."""

    def __init__(self, connection: FakeConnection) -> None:
        self._connection = connection
        self.prefetch_count: int | None = None
        self.closed = False
        self._declared: list[FakeQueue] = []

    def __await__(self) -> Generator[Any, None, FakeChannel]:
        return self._opened().__await__()

    async def _opened(self) -> FakeChannel:
        return self

    async def __aenter__(self) -> FakeChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def set_qos(self, prefetch_count: int = 0, **_: Any) -> None:
        self.prefetch_count = prefetch_count

    async def declare_exchange(self, name: str, *_: Any, **__: Any) -> FakeExchange:
        return FakeExchange(name)

    async def declare_queue(self, name: str, *, passive: bool = False, **_: Any) -> FakeQueue:
        queues = self._connection.queues
        if name not in queues:
            if passive:
                raise LookupError(f"no queue {name!r}")
            queues[name] = FakeQueue(name, self._connection.journal)
        self._declared.append(queues[name])
        return queues[name]

    async def close(self) -> None:
        self.closed = True
        for queue in self._declared:
            queue.give_back()


class FakeConnection:
    """The consuming connection: its channels share its queues."""

    def __init__(self, journal: Journal | None = None) -> None:
        self.journal = journal if journal is not None else []
        self.queues: dict[str, FakeQueue] = {}
        self.channels: list[FakeChannel] = []

    def channel(self) -> FakeChannel:
        channel = FakeChannel(self)
        self.channels.append(channel)
        return channel

    def queue(self, name: str) -> FakeQueue:
        """The queue of this name, declared if need be (what the services declare)."""
        return self.queues.setdefault(name, FakeQueue(name, self.journal))


def dead_channel() -> ChannelInvalidStateError:
    """What settling a message raises once its channel is gone."""
    return ChannelInvalidStateError("channel closed")


# -- a destination --------------------------------------------------------------------------

#: What a send answers: the peer's description of success, or the error it raises.
Answer = str | BaseException


class FakeDestination:
    """A destination (sender.destinations.Destination) that answers what it is told to.

    Sends answer "Success" unless `answer()` queued other outcomes; probes answer unless
    `probe_answers` holds errors. With `gate` set, every send waits for it to open.
    """

    protocol = "fake"

    def __init__(self, name: str = "pacs", *, concurrency: int = 2) -> None:
        self.name = name
        self.config = DicomDestinationConfig(name=name, host="127.0.0.1", concurrency=concurrency)
        self.answers: deque[Answer] = deque()
        self.probe_answers: deque[BaseException] = deque()
        #: The bytes of every file delivered.
        self.received: list[bytes] = []
        self.probes = 0
        self.gate: asyncio.Event | None = None

    def answer(self, *outcomes: Answer) -> None:
        self.answers.extend(outcomes)

    async def send(self, path: Path) -> str:
        if self.gate is not None:
            await self.gate.wait()
        answer = self.answers.popleft() if self.answers else "Success"
        if isinstance(answer, BaseException):
            raise answer
        self.received.append(path.read_bytes())
        return answer

    async def probe(self) -> None:
        self.probes += 1
        if self.probe_answers:
            raise self.probe_answers.popleft()

    def connections_open(self) -> int:
        return 0

    async def close(self) -> None:
        return None


# -- Orthanc --------------------------------------------------------------------------------


class FakeOrthanc:
    """Orthanc's REST API as sendqueue.shared.orthanc.OrthancClient serves it, in memory.

    `store()` adds an instance and its NewInstance change. While `up` is False every call
    fails as an unreachable Orthanc does; `errors` makes one path raise while it is up
    (a 5xx on a file, a 4xx on /changes, a /system that answers something odd).
    """

    def __init__(self) -> None:
        self.up = True
        self.changes: list[dict[str, Any]] = []
        #: Main tags, and every tag of the file (simplified-tags), per instance.
        self.tags: dict[str, dict[str, str]] = {}
        self.file_tags: dict[str, dict[str, str]] = {}
        self.files: dict[str, bytes] = {}
        #: Orthanc's metadata of an instance (RemoteAET, CalledAET, Origin...).
        self.metadata: dict[str, dict[str, str]] = {}
        self.errors: dict[str, Exception] = {}
        #: Every path asked for, with its query string.
        self.calls: list[str] = []
        #: Whether POST /tools/bulk-content exists (Orthanc 1.9.4 and newer); off, the
        #: fake answers it 404 as an older Orthanc does.
        self.bulk_content = False

    def store(
        self,
        orthanc_id: str,
        tags: dict[str, str] | None = None,
        *,
        file_tags: dict[str, str] | None = None,
        data: bytes = b"DICM-fake-instance",
    ) -> None:
        self.tags[orthanc_id] = dict(tags or {})
        self.file_tags[orthanc_id] = dict(file_tags or {})
        self.files[orthanc_id] = data
        self.add_change("NewInstance", orthanc_id)

    def add_change(self, change_type: str, resource_id: str) -> None:
        seq = self.last + 1
        self.changes.append({"Seq": seq, "ChangeType": change_type, "ID": resource_id})

    @property
    def last(self) -> int:
        return int(self.changes[-1]["Seq"]) if self.changes else 0

    def asked(self, path: str) -> int:
        """How many calls went to `path` (query strings aside)."""
        return sum(1 for call in self.calls if call.split("?")[0] == path)

    async def get_json(self, path: str, params: dict[str, str] | None = None) -> Any:
        query = "&".join(f"{k}={v}" for k, v in (params or {}).items())
        self.calls.append(f"{path}?{query}" if query else path)
        self._fail_if_asked_to(path)
        if path == "/system":
            return {"Name": "fake", "Version": "1.12.0"}
        if path == "/changes":
            return self._changes(params or {})
        match path.strip("/").split("/"):
            case ["instances", orthanc_id] if orthanc_id in self.tags:
                return {"ParentSeries": "series-1", "MainDicomTags": self.tags[orthanc_id]}
            case ["instances", orthanc_id, "simplified-tags"] if orthanc_id in self.tags:
                return {**self.file_tags[orthanc_id], **self.tags[orthanc_id]}
            case ["instances", orthanc_id, "attachments", "dicom", "info"] if (
                orthanc_id in self.files
            ):
                return {"UncompressedMD5": hashlib.md5(self.files[orthanc_id]).hexdigest()}
            case ["instances", orthanc_id, "metadata"] if orthanc_id in self.tags:
                return dict(self.metadata.get(orthanc_id, {}))
            case ["series", "series-1", "instances"] | ["studies", "study-1", "instances"]:
                # One series in one study: every stored instance is in both.
                return [
                    {"ID": i, "ParentSeries": "series-1", "MainDicomTags": tags}
                    for i, tags in self.tags.items()
                ]
            case ["series", _]:
                return {"ParentStudy": "study-1", "MainDicomTags": {}}
            case ["studies", _]:
                return {"MainDicomTags": {}, "PatientMainDicomTags": {}}
        raise InstanceNotFound(f"not found in Orthanc (HTTP 404 on GET {path})")

    async def post_json(self, path: str, body: Any) -> Any:
        self.calls.append(path)
        self._fail_if_asked_to(path)
        if path != "/tools/bulk-content" or not self.bulk_content:
            raise InstanceNotFound(f"not found in Orthanc (HTTP 404 on POST {path})")
        # As Orthanc: the instances it knows, in no set order; unknown IDs left out.
        return [
            {
                "ID": orthanc_id,
                "Type": "Instance",
                "ParentSeries": "series-1",
                "MainDicomTags": self.tags[orthanc_id],
                "Metadata": dict(self.metadata.get(orthanc_id, {})),
            }
            for orthanc_id in sorted(set(body["Resources"]))
            if orthanc_id in self.tags
        ]

    async def answers(self) -> bool:
        try:
            await self.get_json("/system")
        except (TransientError, PermanentError):
            return False
        return True

    async def download_instance(self, orthanc_id: str, target: Path) -> int:
        path = f"/instances/{orthanc_id}/file"
        self.calls.append(path)
        self._fail_if_asked_to(path)
        if orthanc_id not in self.files:
            raise InstanceNotFound(f"not found in Orthanc (HTTP 404 on GET {path})")
        try:
            target.write_bytes(self.files[orthanc_id])
        except OSError as exc:  # as the real client reports the spool's faults
            raise SpoolUnavailable(f"the spool {target.parent} cannot be written: {exc}") from None
        return len(self.files[orthanc_id])

    def _fail_if_asked_to(self, path: str) -> None:
        if not self.up:
            raise SourceUnavailable(f"Orthanc unreachable on GET {path}: ConnectionRefusedError")
        if path in self.errors:
            raise self.errors[path]

    def _changes(self, params: dict[str, str]) -> dict[str, Any]:
        # Orthanc's answer: changes after `since`, at most `limit`; Last is the last one
        # returned, or Orthanc's newest change when none is.
        if "last" in params:
            return {"Changes": self.changes[-1:], "Done": True, "Last": self.last}
        since, limit = int(params.get("since", 0)), int(params.get("limit", 100))
        after = [c for c in self.changes if c["Seq"] > since]
        page = after[:limit]
        return {
            "Changes": page,
            "Done": len(after) <= limit,
            "Last": page[-1]["Seq"] if page else self.last,
        }


def consumer_with_fakes(
    destination: FakeDestination,
    orthanc: FakeOrthanc,
    spool: Path,
    *,
    names: Any,
    publisher: FakePublisher | None = None,
    config: Any = None,
    registry: Any = None,
) -> DestinationConsumer:
    """A real DestinationConsumer around fakes: the destination, Orthanc and the publisher
    (imported here: the fakes serve tests that never load the sender)."""
    from prometheus_client import CollectorRegistry

    from sendqueue.services.sender.consumer import DestinationConsumer
    from sendqueue.services.sender.metrics import SenderMetrics
    from sendqueue.shared.config import SenderConfig

    return DestinationConsumer(
        destination,
        names=names,
        publisher=publisher or FakePublisher(),  # type: ignore[arg-type]
        orthanc=orthanc,  # type: ignore[arg-type]
        config=config or SenderConfig(),
        spool_dir=spool,
        metrics=SenderMetrics(registry or CollectorRegistry()),
    )
