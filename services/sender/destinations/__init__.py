"""Destination kinds: each turns a spooled instance file into a delivered instance.

A destination raises the shared error hierarchy: PermanentError (park),
TransientError (retry later), DestinationUnavailable (nothing was delivered and the
peer is unreachable: the consumer pauses and calls ``probe`` until it answers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from sendqueue.shared.config import (
    DestinationConfig,
    DicomWebDestinationConfig,
    OrthancConfig,
    OrthancDestinationConfig,
)


class Destination(Protocol):
    name: str
    #: Metric label: "dicom", "orthanc", "dicomweb".
    protocol: str

    @property
    def config(self) -> DestinationConfig:
        """Read-only here: each kind holds the config Struct of its own kind."""

    async def send(self, path: Path) -> str:
        """Deliver one Part-10 file; returns a short description of the peer's answer."""

    async def probe(self) -> None:
        """Return when the destination answers; raise DestinationUnavailable otherwise."""

    def connections_open(self) -> int:
        """Open associations or connections, for the metrics."""

    async def close(self) -> None: ...


def create_destination(
    config: DestinationConfig, *, source: OrthancConfig | None = None
) -> Destination:
    """The destination of the config's kind. source: the Orthanc that transcodes for "dicom"
    peers refusing compressed syntaxes (without it, pydicom decodes locally)."""
    # Imported here so a sender without DICOM destinations never loads pynetdicom.
    if isinstance(config, OrthancDestinationConfig):
        from sendqueue.services.sender.destinations.orthanc_peer import OrthancPeerDestination

        return OrthancPeerDestination(config)
    if isinstance(config, DicomWebDestinationConfig):
        from sendqueue.services.sender.destinations.dicomweb import DicomWebDestination

        return DicomWebDestination(config)
    from sendqueue.services.sender.destinations.dicom import DicomDestination
    from sendqueue.services.sender.destinations.transcode import Transcoder

    return DicomDestination(config, Transcoder(source))
