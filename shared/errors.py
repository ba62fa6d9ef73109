"""The one error hierarchy of sendqueue.

The split that matters is *transient* (try again later) versus *permanent* (park now,
retrying cannot help). A third family, ``DestinationUnavailable``, is a transient error
about the destination as a whole rather than about one message: the sender then pauses
that destination instead of spending the message's attempts.

Every error that crosses a module boundary, and so reaches a place that decides ack / retry /
park, is defined here. A few exceptions stay private to the one module that raises and
catches them (the DICOM client's own association errors in destinations/scu/, translated
into these at its edge; the ingest feed's `StateUnwritable`; the destination's
`NeedsTranscode` signal, caught by the same destination), like any library's internals.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aiohttp


class SendQueueError(Exception):
    """Base of every error sendqueue raises on purpose."""

    #: A short, stable, low-cardinality label (metrics, filters): e.g. "dimse-a700".
    reason_class: str = "error"

    def __init__(self, message: str, *, reason_class: str | None = None) -> None:
        super().__init__(message)
        if reason_class is not None:
            self.reason_class = reason_class


class ConfigError(SendQueueError):
    """The configuration file is missing, malformed or inconsistent."""

    reason_class = "config"


class TransientError(SendQueueError):
    """Retrying later may succeed (timeouts, out of resources, network trouble)."""

    reason_class = "transient"

    def __init__(
        self, message: str, *, reason_class: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, reason_class=reason_class)
        #: A delay the peer asked for (HTTP Retry-After), in seconds.
        self.retry_after = retry_after


class NotConfirmed(TransientError):
    """RabbitMQ did not confirm a publish (connection lost, nacked, unroutable, timed out):
    whatever the publish was to replace must stay where it is."""

    reason_class = "broker"


class DestinationUnavailable(TransientError):
    """The destination cannot be reached at all: pause it, do not burn attempts.

    Raised only when nothing of the message reached the peer (connection refused,
    association rejected, connect timeout), so retrying the same message later is safe
    and says nothing about the message itself.
    """

    reason_class = "destination-down"


class SourceUnavailable(TransientError):
    """The source Orthanc cannot be reached or answers 5xx: nothing is wrong with the job."""

    reason_class = "source-down"


class SourceThrottled(SourceUnavailable):
    """Orthanc asked us to slow down (HTTP 408, 429): wait, then ask again; no attempt."""

    reason_class = "source-throttled"


class SpoolUnavailable(TransientError):
    """The sender's spool cannot take the file (disk full, directory gone, read-only):
    a fault of this machine, not of the job. The job goes back untouched, and the spool
    is probed until it can be written again."""

    reason_class = "spool-unavailable"


class PermanentError(SendQueueError):
    """Retrying cannot help: the message is parked at once with this reason."""

    reason_class = "permanent"


class InstanceNotFound(PermanentError):
    """The Orthanc resource no longer exists (deleted after it was queued)."""

    reason_class = "not-found"


class UnknownResources(PermanentError):
    """Orthanc knows none of these IDs (POST /api/send, `sendqueue send`): nothing queued."""

    reason_class = "not-found"

    def __init__(self, ids: Sequence[str]) -> None:
        super().__init__(f"unknown Orthanc resource(s): {', '.join(ids)}")
        self.ids = list(ids)


class AssociationRejected(PermanentError):
    """The DICOM peer rejected the association permanently (A-ASSOCIATE-RJ, result 1)."""


class AdminApiError(SendQueueError):
    """The admin API answered with an error status (the CLI's view)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class AdminUnreachable(SendQueueError):
    """Nothing answered at the admin API's URL (or it stopped answering)."""


#: I/O failures that say nothing about the message: worth another try.
TRANSIENT_IO_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectionError,
    aiohttp.ClientPayloadError,
    asyncio.TimeoutError,
    TimeoutError,
    ConnectionError,
)
