"""Storage Commitment (Push Model, PS3.4 J): an instance sent to a DICOM destination with
`storage_commitment = true` counts as delivered only once the peer commits to keep it.

After the C-STORE, the sender asks on an association of its own (N-ACTION, a new
Transaction UID per instance) and waits up to `commitment_timeout` for the answer, the
N-EVENT-REPORT, which the peer sends either on that association or on a new one it opens
to `[sender] commitment_listen` (where it knows sendqueue as a modality under the
destination's `calling_aet`). Reports are matched to their waiter by Transaction UID.
Several sender processes share one listening address: the process that holds the port
passes every report to all of them through RabbitMQ (`P.commitments`), so a report reaches
the process that waits for it, whichever one received it.

    committed                   -> delivered
    failed (peer's reason)      -> 0x0122 (SOP class not supported): permanent (parked);
                                   anything else: transient (retried: sent and asked again)
    no report in time           -> transient ("commitment-timeout")
    N-ACTION refused            -> transient ("commitment-refused")
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from aio_pika import ExchangeType
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from sendqueue.services.sender.destinations.instance import InstanceMeta, read_meta
from sendqueue.shared.amqp import Publisher
from sendqueue.shared.config import DestinationConfig, DicomDestinationConfig, parse_listen
from sendqueue.shared.errors import PermanentError, TransientError
from sendqueue.shared.settle import settle
from sendqueue.shared.topology import Names

log = logging.getLogger(__name__)

#: The Storage Commitment Push Model SOP Class, and its well-known SOP Instance UID.
PUSH_MODEL = "1.2.840.10008.1.20.1"
PUSH_MODEL_INSTANCE = "1.2.840.10008.1.20.1.1"
#: Failure reasons (PS3.4 J.3.3.1.1) after which asking again cannot help.
_PERMANENT_REASONS = {0x0122: "SOP class not supported", 0x0119: "class-instance conflict"}
_REASONS = {
    0x0110: "processing failure",
    0x0112: "no such object instance",
    0x0213: "resource limitation",
    0x0122: "SOP class not supported",
    0x0119: "class-instance conflict",
    0x0131: "duplicate transaction UID",
}


class CommitmentReport(msgspec.Struct, frozen=True, kw_only=True, tag="commitment"):
    """An N-EVENT-REPORT, as passed between sender processes."""

    transaction_uid: str
    committed: list[str] = msgspec.field(default_factory=list)
    #: SOP Instance UID -> the peer's failure reason code.
    failed: dict[str, int] = msgspec.field(default_factory=dict)


Relay = Callable[[CommitmentReport], Awaitable[None]]


@dataclass
class Commitments:
    """The waiters of this process, and the listener when this process holds the port."""

    listen: str = ""
    #: Passes a report received here to every sender process (None: this process only).
    relay: Relay | None = None
    _waiting: dict[str, asyncio.Future[CommitmentReport]] = field(default_factory=dict)
    _loop: asyncio.AbstractEventLoop | None = None
    _server: Any = None
    _dispatching: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self, aet: str) -> None:
        """Listen on `listen` for reports opened by peers (if this process can bind it)."""
        self._loop = asyncio.get_running_loop()
        if not self.listen:
            return
        from pynetdicom import AE, evt  # only when a destination asks for commitment

        host, port = parse_listen(self.listen)
        ae = AE(ae_title=aet)
        ae.require_called_aet = False
        ae.add_supported_context(PUSH_MODEL, scu_role=True, scp_role=True)
        handlers: list[Any] = [(evt.EVT_N_EVENT_REPORT, self._on_report_thread)]
        try:
            self._server = ae.start_server((host, port), block=False, evt_handlers=handlers)
        except OSError as exc:
            # Another sender process holds it: its reports reach us through RabbitMQ.
            log.info("commitment_listen %s is held by another process (%s)", self.listen, exc)
            return
        log.info("storage commitment reports accepted on %s", self.listen)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()

    def received(self, report: CommitmentReport) -> None:
        """A report from any process: wakes its waiter here, if any."""
        waiter = self._waiting.get(report.transaction_uid)
        if waiter is not None and not waiter.done():
            waiter.set_result(report)

    async def commit(self, config: DicomDestinationConfig, meta: InstanceMeta) -> str:
        """Asks the peer to commit to one instance and waits for its answer."""
        assert self._loop is not None, "Commitments.start() first"
        transaction = generate_uid()
        waiter: asyncio.Future[CommitmentReport] = self._loop.create_future()
        self._waiting[transaction] = waiter
        stop_waiting = threading.Event()
        asking = asyncio.create_task(
            asyncio.to_thread(self._ask, config, meta, transaction, stop_waiting)
        )
        try:
            report = await self._wait(waiter, asking, config.commitment_timeout)
        finally:
            self._waiting.pop(transaction, None)
            stop_waiting.set()
            with contextlib.suppress(Exception):
                await asking
        if report is None:
            raise TransientError(
                f"no storage commitment report for {meta.sop_instance_uid} within"
                f" {config.commitment_timeout:g}s",
                reason_class="commitment-timeout",
            )
        return _outcome(report, meta.sop_instance_uid)

    @staticmethod
    async def _wait(
        waiter: asyncio.Future[CommitmentReport], asking: asyncio.Task[None], timeout: float
    ) -> CommitmentReport | None:
        """The report, or None after `timeout`; the N-ACTION's own error if it failed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        both: set[asyncio.Future[Any]] = {waiter, asking}
        await asyncio.wait(both, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done() and asking.done() and asking.exception() is not None:
            raise asking.exception()  # type: ignore[misc]
        if not waiter.done():
            await asyncio.wait({waiter}, timeout=max(0.0, deadline - loop.time()))
        return waiter.result() if waiter.done() else None

    # -- pynetdicom threads ----------------------------------------------------------------
    def _ask(
        self,
        config: DicomDestinationConfig,
        meta: InstanceMeta,
        transaction: str,
        stop_waiting: threading.Event,
    ) -> None:
        """N-ACTION on an association of its own; it stays open while the answer may come
        on it (until the report arrives or the wait ends)."""
        from pynetdicom import AE, evt

        ae = AE(ae_title=config.calling_aet)
        ae.connection_timeout = config.connect_timeout
        ae.acse_timeout = config.acse_timeout
        ae.dimse_timeout = config.dimse_timeout
        ae.add_requested_context(PUSH_MODEL)
        handlers: list[Any] = [(evt.EVT_N_EVENT_REPORT, self._on_report_thread)]
        assoc = ae.associate(
            config.host, config.port, ae_title=config.called_aet, evt_handlers=handlers
        )
        if not assoc.is_established:
            raise TransientError(
                f"{config.called_aet} refused the storage commitment association",
                reason_class="commitment-refused",
            )
        try:
            status, _ = assoc.send_n_action(
                _request(meta, transaction), 1, PUSH_MODEL, PUSH_MODEL_INSTANCE
            )
            code = int(getattr(status, "Status", -1))
            if code != 0x0000:
                raise TransientError(
                    f"{config.called_aet} refused the storage commitment request (N-ACTION"
                    f" status 0x{code & 0xFFFF:04X})",
                    reason_class="commitment-refused",
                )
            stop_waiting.wait(config.commitment_timeout)
        finally:
            if assoc.is_established:  # the peer may have released or aborted it already
                assoc.release()

    def _on_report_thread(self, event: Any) -> tuple[int, None]:
        report = _report(event.event_information)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._schedule, report)
        return 0x0000, None  # (status, event reply): received

    def _schedule(self, report: CommitmentReport) -> None:
        # The loop keeps only a weak reference to a task: hold it until it is done.
        task = asyncio.create_task(self._dispatch(report))
        self._dispatching.add(task)
        task.add_done_callback(self._dispatching.discard)

    async def _dispatch(self, report: CommitmentReport) -> None:
        self.received(report)
        if self.relay is not None and report.transaction_uid not in self._waiting:
            try:
                await self.relay(report)
            except Exception as exc:
                log.warning("storage commitment report not relayed: %r", exc)


async def commit_if_asked(
    commitments: Commitments | None, config: DestinationConfig, path: Path, detail: str
) -> str:
    """After a C-STORE: the delivery detail, once committed when the destination asks for
    Storage Commitment; raises like a failed send otherwise."""
    if not isinstance(config, DicomDestinationConfig) or not config.storage_commitment:
        return detail
    if commitments is None:
        raise TransientError("storage commitment is not set up", reason_class="internal")
    meta = await asyncio.to_thread(read_meta, path)
    outcome = await commitments.commit(config, meta)
    return f"{detail}, {outcome}"


def _request(meta: InstanceMeta, transaction: str) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction
    item = Dataset()
    item.ReferencedSOPClassUID = meta.sop_class_uid
    item.ReferencedSOPInstanceUID = meta.sop_instance_uid
    ds.ReferencedSOPSequence = [item]
    return ds


def _report(info: Dataset | None) -> CommitmentReport:
    info = info or Dataset()
    committed = [str(i.ReferencedSOPInstanceUID) for i in info.get("ReferencedSOPSequence", [])]
    failed = {
        str(i.ReferencedSOPInstanceUID): int(i.get("FailureReason", 0x0110))
        for i in info.get("FailedSOPSequence", [])
    }
    return CommitmentReport(
        transaction_uid=str(info.get("TransactionUID", "")), committed=committed, failed=failed
    )


def _outcome(report: CommitmentReport, sop_instance_uid: str) -> str:
    if sop_instance_uid in report.committed and sop_instance_uid not in report.failed:
        return "committed"
    code = report.failed.get(sop_instance_uid, 0x0110)
    reason = _REASONS.get(code, "unknown reason")
    message = (
        f"the peer did not commit to keep {sop_instance_uid}: failure reason 0x{code:04X}"
        f" ({reason})"
    )
    if code in _PERMANENT_REASONS:
        raise PermanentError(message, reason_class="commitment-failed")
    raise TransientError(message, reason_class="commitment-failed")


_report_decoder = msgspec.json.Decoder(CommitmentReport)


async def share_reports(
    commitments: Commitments,
    connection: AbstractRobustConnection,
    publisher: Publisher,
    names: Names,
) -> None:
    """Every sender process hears every report received by any of them (a fanout exchange,
    one exclusive queue per process; transient: a report nobody waits for is worthless)."""
    channel = await connection.channel()
    exchange = await channel.declare_exchange(
        names.commitments_exchange, ExchangeType.FANOUT, durable=True
    )
    queue = await channel.declare_queue(
        names.listener("commitments"), exclusive=True, auto_delete=True
    )
    await queue.bind(exchange)

    async def on_message(message: AbstractIncomingMessage) -> None:
        async def take() -> None:
            try:
                commitments.received(_report_decoder.decode(message.body))
            except msgspec.DecodeError:
                log.debug("unreadable commitment report ignored")

        await settle(message, take, what="commitment report", on_crash=_dropped)

    await queue.consume(on_message)

    async def relay(report: CommitmentReport) -> None:
        body = msgspec.json.encode(report)
        await publisher.publish(
            names.commitments_exchange, "", body, persistent=False, mandatory=False
        )

    commitments.relay = relay


async def _dropped(_exc: BaseException) -> None:
    """A report that cannot be applied is dropped: its waiter times out and retries."""
