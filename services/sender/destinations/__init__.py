"""Destination kinds: each turns a spooled instance file into a delivered instance.

A destination raises the shared error hierarchy: PermanentError (park),
TransientError (retry later), DestinationUnavailable (nothing was delivered and the
peer is unreachable: the consumer pauses and calls ``probe`` until it answers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from shared.config import DestinationConfig


class Destination(Protocol):
    name: str
    #: Metric label: "dicom", "orthanc", "dicomweb".
    protocol: str
    config: DestinationConfig

    async def send(self, path: Path) -> str:
        """Deliver one Part-10 file; returns a short description of the peer's answer."""

    async def probe(self) -> None:
        """Return when the destination answers; raise DestinationUnavailable otherwise."""

    def connections_open(self) -> int:
        """Open associations or connections, for the metrics."""

    async def close(self) -> None: ...


def create_destination(config: DestinationConfig) -> Destination:
    from services.sender.destinations.dicom import DicomDestination

    return DicomDestination(config)
