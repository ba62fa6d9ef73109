"""Acks of one consumer's channel, coalesced into `basic.ack(multiple=True)` where safe.

A multiple ack of tag T settles every unacked delivery with a tag up to T on the channel,
so it is sent only for a T below which each delivery is either settled already or done
(its job finished and whatever replaces it was confirmed). Deliveries still in hand, and
those left unacked on purpose (shutdown: the broker must deliver them again), stay in
`_entries` as barriers that no multiple ack passes. Done deliveries behind a barrier are
acked one by one at the same flush, so a long send does not hold them (they would count
against the prefetch and starve the other associations).

A flush runs one event-loop iteration after the first ack asks for it, so the jobs that
finish together go in one frame without adding latency; flushes run one after the other,
so no frame ever names a tag another frame already acked (RabbitMQ would close the channel
on it).

The delivery tags count from 1 on each channel RabbitMQ opens; aio-pika's robust channel
reopens a fresh one (a new aiormq channel object) after a loss. A message from a new
channel starts a new tag space: the acks still waiting on the old one are dropped, the
broker delivers those jobs again (at least once: a duplicate, never a loss).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from sendqueue.shared.settle import ack_alone

log = logging.getLogger(__name__)

#: How long a flush waits for more acks after the first: none, it runs on the next loop
#: iteration. Measured (bench/acks.py, prefetch 8): waiting 1 ms put 8 jobs in each frame
#: instead of 2.7 and halved the broker's CPU per job, but cut the jobs/s by a third (the
#: done jobs held the prefetch window meanwhile); 5 ms cut them by three quarters.
DEFAULT_DELAY = 0.0


class _Entry:
    """A delivery in hand, in the order the channel delivered it (one per job: slots)."""

    __slots__ = ("acked", "done", "message", "tag")

    def __init__(self, tag: int, message: AbstractIncomingMessage) -> None:
        self.tag = tag
        self.message = message
        self.done = False
        #: Set once its ack is written (or could not be): the job's settle returns then.
        self.acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class AckCoalescer:
    """One consumer's acks: `track` each delivery on arrival, then `ack` or `nack_requeue`.

    Parameters:
        what: names the consumer in log lines.
        delay: seconds a flush waits for more acks after the first. Defaults to
            `DEFAULT_DELAY`.
    """

    def __init__(self, what: str, *, delay: float = DEFAULT_DELAY) -> None:
        self._what = what
        self._delay = delay
        #: The aiormq channel whose tag space `_entries` is in (None before any delivery).
        self._channel: Any = None
        #: Deliveries in hand by delivery tag; insertion order is tag order.
        self._entries: dict[int, _Entry] = {}
        #: The highest tag a multiple ack may name: every tag up to it was seen here.
        self._seen_upto = 0
        #: A tag was skipped (a delivery this consumer never saw): `_seen_upto` stays put.
        self._gap = False
        self._done = 0
        self._flusher: asyncio.Task[None] | None = None

    def track(self, message: AbstractIncomingMessage) -> None:
        """A delivery arrived: call before anything awaits, so tags are seen in order."""
        channel = _channel_of(message)
        tag = message.delivery_tag
        if channel is None or tag is None:
            return  # closed already (its ack fails alone), or a message without a tag
        if channel is not self._channel:
            self._new_tag_space(channel)
        if not self._gap and tag == self._seen_upto + 1:
            self._seen_upto = tag
        elif not self._gap:
            self._gap = True
            log.warning(
                "%s: delivery tag %d follows %d; acks above %d go one by one",
                self._what,
                tag,
                self._seen_upto,
                self._seen_upto,
            )
        self._entries[tag] = _Entry(tag, message)

    async def ack(self, message: AbstractIncomingMessage) -> None:
        """The job is done: ack it with the next flush; returns once that was written."""
        entry = self._entry(message)
        if entry is None:
            await ack_alone(message)
            return
        if not entry.done:
            entry.done = True
            self._done += 1
            self._ask_flush()
        await entry.acked

    async def nack_requeue(self, message: AbstractIncomingMessage) -> None:
        """Put the message back; once that is written, no multiple ack can undo it."""
        try:
            await message.nack(requeue=True)
        except Exception as exc:
            # Kept as a barrier: a multiple ack would ack (lose) it if the nack never left.
            log.warning("nack failed (%s); the message will be redelivered", exc)
            return
        entry = self._entry(message)
        if entry is not None and not entry.done:
            del self._entries[entry.tag]

    async def flush(self) -> None:
        """Write every ack decided so far (shutdown: before the channel closes)."""
        if self._done:
            self._ask_flush()
        if self._flusher is not None:
            await asyncio.shield(self._flusher)

    def _entry(self, message: AbstractIncomingMessage) -> _Entry | None:
        entry = self._entries.get(message.delivery_tag or 0)
        # The same tag on an older channel is another delivery: not ours to mark.
        return entry if entry is not None and entry.message is message else None

    def _new_tag_space(self, channel: Any) -> None:
        if self._channel is not None:
            self._drop("the channel was reopened")
        self._channel = channel
        self._seen_upto = 0
        self._gap = False

    def _ask_flush(self) -> None:
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_while_done())

    async def _flush_while_done(self) -> None:
        try:
            if self._delay > 0:
                await asyncio.sleep(self._delay)
            while self._done:
                await self._write_decided()
        finally:
            self._flusher = None

    async def _write_decided(self) -> None:
        """Only the flusher task writes: a frame decided while another is being written
        could otherwise overtake it and name a tag that frame acks (a channel error)."""
        if self._channel is None or self._channel.is_closed:
            self._drop("the channel is closed")
            return
        prefix, alone = self._take_done()
        if prefix:
            await self._write(prefix[-1].message, multiple=len(prefix) > 1, settles=prefix)
        for entry in alone:
            await self._write(entry.message, multiple=False, settles=[entry])

    def _take_done(self) -> tuple[list[_Entry], list[_Entry]]:
        """(the done prefix a multiple ack may cover, the done entries beyond it), taken out
        of `_entries`."""
        prefix: list[_Entry] = []
        alone: list[_Entry] = []
        in_prefix = True
        for tag, entry in self._entries.items():
            in_prefix = in_prefix and entry.done and tag <= self._seen_upto
            if in_prefix:
                prefix.append(entry)
            elif entry.done:
                alone.append(entry)
        for entry in prefix + alone:
            del self._entries[entry.tag]
        self._done = 0
        return prefix, alone

    async def _write(
        self, message: AbstractIncomingMessage, *, multiple: bool, settles: list[_Entry]
    ) -> None:
        try:
            await message.ack(multiple=multiple)
        except Exception as exc:
            log.warning("%s: ack failed (%s); the message will be redelivered", self._what, exc)
        finally:
            for entry in settles:
                _resolve(entry)

    def _drop(self, why: str) -> None:
        """The tags in hand mean nothing any more: their jobs will be delivered again."""
        done = [entry for entry in self._entries.values() if entry.done]
        if done:
            log.warning(
                "%s: %s; %d ack(s) dropped, the broker delivers those jobs again",
                self._what,
                why,
                len(done),
            )
        for entry in done:
            _resolve(entry)
        self._entries.clear()
        self._done = 0


def _channel_of(message: AbstractIncomingMessage) -> Any:
    """The aiormq channel the message came on (one per tag space); None once closed."""
    try:
        return message.channel
    except Exception:  # aio-pika raises ChannelInvalidStateError for a closed channel
        return None


def _resolve(entry: _Entry) -> None:
    if not entry.acked.done():
        entry.acked.set_result(None)
