"""The one way a consumed message is settled: every consumer of sendqueue goes through here.

In the spirit of aio-pika's ``message.process()``, with sendqueue's rule that a message is
acked only once whatever replaces it is confirmed:

    handler returned                   -> ack (what replaces it was confirmed)
    a publish was not confirmed        -> nack with requeue, after a pause: it stays queued
    CancelledError (shutdown)          -> left unacked: the broker returns it on close
    any other exception                -> on_crash(exc), which publishes the message where an
                                          operator sees it (a failure report, the parking
                                          queue), then ack; without one, or if it fails
                                          too: nack with requeue, and the queue's delivery
                                          limit dead-letters it after a bounded number of
                                          tries, so it neither stalls a slot nor loops

How an ack or a nack goes out is the caller's choice (`ack=`, `nack=`): one frame each by
default; the sender's work queues coalesce their acks (sendqueue.shared.acks).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aio_pika.abc import AbstractIncomingMessage

from sendqueue.shared.errors import NotConfirmed

log = logging.getLogger(__name__)

Handler = Callable[[], Awaitable[None]]
#: Acks, or nacks with requeue, one message; never raises (but CancelledError).
Settle = Callable[[AbstractIncomingMessage], Awaitable[None]]
#: Publishes the message somewhere visible after `handler` crashed; raises if it cannot.
OnCrash = Callable[[BaseException], Awaitable[None]]

#: Before a message whose replacement was not confirmed goes back: without a pause, a
#: broker that refuses publishes (an alarm) would get it back at once, in a tight loop.
PUBLISH_RETRY_PAUSE = 1.0


async def settle(
    message: AbstractIncomingMessage,
    handler: Handler,
    *,
    what: str,
    on_crash: OnCrash | None = None,
    ack: Settle | None = None,
    nack: Settle | None = None,
) -> None:
    """Run `handler` for `message` and settle it; never raises (but CancelledError)."""
    nack = nack or nack_requeue
    try:
        await handler()
    except NotConfirmed as exc:
        log.error("%s: RabbitMQ did not confirm (%r); the message stays queued", what, exc)
        await asyncio.sleep(PUBLISH_RETRY_PAUSE)
        await nack(message)
        return
    except Exception as exc:
        log.exception("%s: unexpected error", what)
        if not await _crashed(message, exc, what, on_crash, nack):
            return
    await (ack or ack_alone)(message)


async def _crashed(
    message: AbstractIncomingMessage,
    exc: Exception,
    what: str,
    on_crash: OnCrash | None,
    nack: Settle,
) -> bool:
    """True when the message is safely elsewhere (ack it); False when it went back."""
    if on_crash is not None:
        try:
            await on_crash(exc)
            return True
        except Exception as second:
            log.error("%s: cannot set the message aside either (%r)", what, second)
    await asyncio.sleep(PUBLISH_RETRY_PAUSE)
    await nack(message)
    return False


async def ack_alone(message: AbstractIncomingMessage) -> None:
    """Ack, tolerating a channel that died meanwhile: the broker will redeliver."""
    try:
        await message.ack()
    except Exception as exc:
        log.warning("ack failed (%s); the message will be redelivered", exc)


async def nack_requeue(message: AbstractIncomingMessage) -> None:
    try:
        await message.nack(requeue=True)
    except Exception as exc:
        log.warning("nack failed (%s); the message will be redelivered", exc)
