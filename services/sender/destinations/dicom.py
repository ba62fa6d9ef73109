"""C-STORE to a DICOM destination: the destination kind, over one of two data paths.

    data_path = "fast"        scu/: associations this process owns (dicom_fast.py)
    data_path = "pynetdicom"  pynetdicom's associations and threads (dicom_pynetdicom.py)

Both block, so every send runs in this destination's own thread pool, one thread per
unit of concurrency, each owning one association. Every SOP class is proposed twice: in
the file's own transfer syntax, and uncompressed. A peer that accepts only the
uncompressed context gets an uncompressed copy made by transcode.py (unless the
destination says transcode = false: then the job is parked with that reason). With a
[tls] table the association runs over DICOM TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from pydicom.uid import UID

from sendqueue.services.sender.destinations.contexts import (
    KnownContexts,
    NeedsTranscode,
)
from sendqueue.services.sender.destinations.contexts import proposals as _proposals
from sendqueue.services.sender.destinations.dicom_fast import FastPath
from sendqueue.services.sender.destinations.instance import InstanceMeta, read_meta
from sendqueue.services.sender.destinations.tls import client_context
from sendqueue.services.sender.destinations.transcode import Transcoder
from sendqueue.services.sender.fetch import InstanceFetcher
from sendqueue.shared.config import DicomDestinationConfig
from sendqueue.shared.errors import PermanentError

__all__ = ["DicomDestination", "InstanceMeta", "NeedsTranscode", "_proposals", "read_meta"]

log = logging.getLogger(__name__)

Delivered = tuple[int, str, float]  # (bytes downloaded, the peer's answer, seconds sending)


class DataPath(Protocol):
    """What both data paths offer; every method blocks."""

    def send_blocking(self, path: Path) -> str: ...

    def echo_blocking(self) -> None: ...

    def connections_open(self) -> int: ...

    def release_idle(self) -> None: ...

    def close_all(self) -> None: ...


class DicomDestination:
    protocol = "dicom"

    def __init__(
        self, config: DicomDestinationConfig, transcoder: Transcoder | None = None
    ) -> None:
        self.config = config
        self.name = config.name
        self._transcoder = transcoder or Transcoder(None)
        tls = client_context(config.tls, config.name) if config.tls is not None else None
        self.data_path = _data_path(config, tls)
        self._pool = ThreadPoolExecutor(
            max_workers=config.concurrency, thread_name_prefix=f"sq-dicom-{config.name}"
        )
        self._reaper: asyncio.Task[None] | None = None

    async def send(self, path: Path) -> str:
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._release_idle_forever())
        try:
            return await self._in_pool(path)
        except NeedsTranscode as need:
            return await self._send_transcoded(path, need)

    async def deliver(self, fetcher: InstanceFetcher, orthanc_id: str, spool: Path) -> Delivered:
        """Download from Orthanc and send, both in one worker thread (the hot path).

        Small instances never touch the disk; large ones go through `spool`, which the
        caller removes."""
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._release_idle_forever())
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._pool, self._deliver_blocking, fetcher, orthanc_id, spool
            )
        except NeedsTranscode as need:
            # _deliver_blocking left the instance in the spool file for the transcoder
            started = time.monotonic()
            detail = await self._send_transcoded(spool, need)
            return spool.stat().st_size, detail, time.monotonic() - started

    def _deliver_blocking(
        self, fetcher: InstanceFetcher, orthanc_id: str, spool: Path
    ) -> Delivered:
        fetched = fetcher.fetch(orthanc_id, spool)
        started = time.monotonic()
        if fetched.data is None:
            detail = self.data_path.send_blocking(spool)
        elif isinstance(self.data_path, FastPath):
            try:
                detail = self.data_path.send_bytes(fetched.data)
            except NeedsTranscode:
                spool.write_bytes(fetched.data)
                raise
        else:
            spool.write_bytes(fetched.data)
            detail = self.data_path.send_blocking(spool)
        return fetched.size, detail, time.monotonic() - started

    async def _in_pool(self, path: Path) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.data_path.send_blocking, path)

    async def _send_transcoded(self, path: Path, need: NeedsTranscode) -> str:
        meta, target = need.meta, UID(need.target)
        if not self.config.transcode:
            raise PermanentError(
                f"{self.name} accepts SOP class {meta.sop_class_uid} only as {target.name}, not "
                f"{UID(meta.transfer_syntax_uid).name}, and transcode = false for it",
                reason_class="transcode-forbidden",
            )
        copy, by = await self._transcoder.transcode(path, meta, target)
        try:
            detail = await self._in_pool(copy)
        finally:
            copy.unlink(missing_ok=True)
        log.info(
            "%s: sent %s transcoded to %s by %s", self.name, meta.sop_instance_uid, target.name, by
        )
        return f"{detail} (transcoded to {target.name} by {by})"

    async def _release_idle_forever(self) -> None:
        """An idle association is released after idle_timeout, not held until the next job."""
        while True:
            await asyncio.sleep(max(1.0, self.config.idle_timeout / 2))
            try:
                await asyncio.to_thread(self.data_path.release_idle)
            except Exception as exc:
                log.debug("%s: releasing idle associations: %r", self.name, exc)

    async def probe(self) -> None:
        await asyncio.to_thread(self.data_path.echo_blocking)

    def connections_open(self) -> int:
        return self.data_path.connections_open()

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        await asyncio.to_thread(self.data_path.close_all)
        self._pool.shutdown(wait=False, cancel_futures=True)
        await self._transcoder.close()


def _data_path(config: DicomDestinationConfig, tls: ssl.SSLContext | None) -> DataPath:
    known = KnownContexts()
    if config.data_path == "pynetdicom":
        from sendqueue.services.sender.destinations.dicom_pynetdicom import PynetdicomPath

        return PynetdicomPath(config, tls, known)
    return FastPath(config, tls, known)
