"""The file a destination gets: Orthanc's stored file, or the copy Orthanc prepares for it.

A destination with `transfer_syntax` or `modify` gets Orthanc's answer to
POST /instances/{id}/modify ("Transcode", "Replace", "Remove", "RemovePrivateTags"): Orthanc
decodes and rewrites the file, answers it without storing it, and the answer is streamed to
the spool file like any download. Nothing is decoded in Python and memory stays flat.
"""

from __future__ import annotations

from pathlib import Path

from sendqueue.shared.destination_config import DestinationConfigBase
from sendqueue.shared.orthanc import OrthancClient


async def fetch_instance(
    orthanc: OrthancClient, destination: DestinationConfigBase, orthanc_id: str, target: Path
) -> int:
    """Writes the file to send to `target`; returns its size in bytes."""
    body = destination.prepare_body()
    if body is None:
        return await orthanc.download_instance(orthanc_id, target)
    return await orthanc.download_modified(orthanc_id, body, target)
