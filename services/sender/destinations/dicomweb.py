"""kind = "dicomweb": STOW-RS to url + "/studies", one instance or one study batch per request.

Batching (batch_max_instances > 1) is a group commit per study: while requests for a
study are in flight (up to half the destination's `concurrency` at once, at least one),
instances of that study that arrive meanwhile wait; the next request takes as many of
them as the caps allow (count, bytes; one instance bigger than batch_max_bytes goes
alone). So batches form only from instances in flight at the same time: at most the jobs
the consumer holds (its prefetch, twice `concurrency`), and none is held back waiting for
more. More than one request per study keeps the peer busy while a batch is answered (one
at a time left its CPU idle between requests: 0.81x Orthanc's peer store); no more than
half keeps batches forming.
Each instance still gets its own outcome from the answer's per-instance lists.

A 409 is permanent for every instance of the request (the issue's contract), whatever
the per-instance FailureReason; 401/403 pause the destination (http.py).

`deliver` is the hot path (http.py's module doc): downloaded, and its UIDs read, in the
destination's own thread; a small instance goes into the request from memory.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.tag import Tag

from sendqueue.services.sender.destinations import stow
from sendqueue.services.sender.destinations.http import (
    HttpPeer,
    Part,
    StreamedBody,
    body_part,
    raise_for_http,
    read_answer,
)
from sendqueue.services.sender.destinations.instance import read_meta, read_study_uid
from sendqueue.services.sender.fetch import InstanceFetcher
from sendqueue.shared.config import DicomWebDestinationConfig
from sendqueue.shared.errors import PermanentError, SendQueueError, TransientError

_ACCEPT = {"Accept": "application/dicom+json"}


@dataclass(eq=False)
class _Pending:
    """One instance waiting to be part of a STOW-RS request."""

    #: The instance: its bytes held in memory, or its spool file.
    body: Part
    sop_uid: str
    study_uid: str
    size: int
    done: asyncio.Future[str] = field(default_factory=asyncio.Future)
    #: Set when this instance's task is to send the next request of its study.
    turn: asyncio.Future[None] = field(default_factory=asyncio.Future)


def _read(path: Path, with_study: bool) -> tuple[str, str, int]:
    """(SOP instance UID, study UID or "", size): runs in a worker thread."""
    meta = read_meta(path)
    study = read_study_uid(path) if with_study else ""
    return meta.sop_instance_uid, study, path.stat().st_size


_STUDY_INSTANCE_UID = Tag(0x0020, 0x000D)


def _read_bytes(data: bytes, with_study: bool) -> tuple[str, str, int]:
    """_read for an instance held in memory: the same UIDs, PermanentError if not Part-10."""
    try:
        ds = dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=[_STUDY_INSTANCE_UID])
        sop_uid = str(ds.file_meta.MediaStorageSOPInstanceUID)
    except Exception as exc:
        raise PermanentError(
            f"the instance file is not valid DICOM Part-10: {exc}", reason_class="invalid-dicom"
        ) from None
    return sop_uid, str(ds.get("StudyInstanceUID", "")) if with_study else "", len(data)


def _fetch_and_read(
    fetcher: InstanceFetcher, orthanc_id: str, spool: Path, with_study: bool
) -> tuple[Part, tuple[str, str, int]]:
    """Download, then read the UIDs: both in one of the destination's threads."""
    fetched = fetcher.fetch(orthanc_id, spool)
    body = body_part(fetched, spool)
    if isinstance(body, bytes):
        return body, _read_bytes(body, with_study)
    return body, _read(body, with_study)


class DicomWebDestination:
    protocol = "dicomweb"

    def __init__(self, config: DicomWebDestinationConfig) -> None:
        self.config = config
        self.name = config.name
        self._peer = HttpPeer(config)
        self._batching = config.batch_max_instances > 1
        self._waiting: dict[str, deque[_Pending]] = {}
        #: Requests in flight (or about to be) per study, up to _leaders_per_study.
        self._leading: dict[str, int] = {}
        self._leaders_per_study = max(1, config.concurrency // 2)
        self.requests_sent = 0  # for tests and logs: how many STOW-RS requests

    async def send(self, path: Path) -> str:
        sop_uid, study_uid, size = await asyncio.to_thread(_read, path, self._batching)
        return await self._send(_Pending(path, sop_uid, study_uid, size))

    async def deliver(
        self, fetcher: InstanceFetcher, orthanc_id: str, spool: Path
    ) -> tuple[int, str, float]:
        """Download (own thread) and STOW: (bytes, the peer's answer, seconds sending).
        A large instance goes through `spool`, which the caller removes."""
        work = _fetch_and_read, fetcher, orthanc_id, spool, self._batching
        body, (sop_uid, study_uid, size) = await self._peer.in_thread(*work)
        started = time.monotonic()
        detail = await self._send(_Pending(body, sop_uid, study_uid, size))
        return size, detail, time.monotonic() - started

    async def _send(self, item: _Pending) -> str:
        # item is made on the event loop: its futures need this loop.
        if not self._batching:
            return _unwrap((await self._stow([item]))[item.sop_uid])
        return await self._send_batched(item)

    async def probe(self) -> None:
        await self._peer.probe("/studies?limit=1", headers=_ACCEPT)

    def connections_open(self) -> int:
        return self._peer.in_flight

    async def close(self) -> None:
        await self._peer.close()

    # -- one request ------------------------------------------------------------------
    async def _stow(self, batch: list[_Pending]) -> dict[str, stow.Result]:
        """POST the batch; per-instance results, or raises what fails the whole request."""
        boundary = stow.new_boundary()
        what = f"STOW-RS {self._peer.base}/studies"
        instances = [item.body for item in batch]

        def body() -> StreamedBody:
            parts = stow.body_parts(instances, boundary)
            return StreamedBody(parts, stow.content_type(boundary), self.config.http_timeout)

        self.requests_sent += 1
        deadline = self.config.http_timeout
        async with self._peer.request("POST", "/studies", body, headers=_ACCEPT) as resp:
            if resp.status == 409:
                answer = stow.parse_answer(await read_answer(resp, what, deadline))
                raise PermanentError(
                    f"{what}: HTTP 409 Conflict, nothing stored{stow.failure_codes(answer)}",
                    reason_class="http-409",
                )
            await raise_for_http(resp, what)
            status = resp.status
            raw = await read_answer(resp, what, deadline)
        if status == 200 and not raw.strip():
            return {item.sop_uid: await self._verify(item.sop_uid, what) for item in batch}
        answer = stow.parse_answer(raw) if status in (200, 202) else None
        return {item.sop_uid: stow.result_for(item.sop_uid, answer, status, what) for item in batch}

    async def _verify(self, uid: str, what: str) -> stow.Result:
        """An empty 200 says "all stored" without the lists: believe it once QIDO-RS finds
        the instance (a proxy's empty 200 must not count as delivered)."""
        search = stow.qido_path(uid)
        try:
            async with self._peer.request("GET", search, headers=_ACCEPT) as resp:
                if resp.status == 200:
                    found = stow.qido_found(
                        await read_answer(resp, what, self.config.http_timeout), uid
                    )
                    if found:
                        return "Stored (empty answer, found by QIDO-RS)"
        except SendQueueError as exc:
            return TransientError(
                f"{what}: empty HTTP 200, and the QIDO-RS check failed: {exc}",
                reason_class="stow-unverified",
            )
        return TransientError(
            f"{what}: empty HTTP 200, but QIDO-RS does not find {uid} at the peer",
            reason_class="stow-unverified",
        )

    # -- batching -----------------------------------------------------------------------
    async def _send_batched(self, item: _Pending) -> str:
        study = item.study_uid
        queue = self._waiting.setdefault(study, deque())
        queue.append(item)
        if self._leading.get(study, 0) < self._leaders_per_study:
            self._leading[study] = self._leading.get(study, 0) + 1
            item.turn.set_result(None)
        try:
            waits: list[asyncio.Future[Any]] = [item.turn, item.done]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self._withdraw(item)
            raise
        if not item.done.done():
            await self._lead(item)
        return item.done.result()

    async def _lead(self, leader: _Pending) -> None:
        """Send the leader's batch, settle each of its instances, pass the turn on."""
        study = leader.study_uid
        batch = self._claim(leader)
        try:
            results = await self._stow(batch)
        except Exception as exc:
            results = dict.fromkeys((item.sop_uid for item in batch), _as_result(exc))
        except BaseException:
            interrupted = TransientError("the batch request was interrupted", reason_class="io")
            _settle(batch, dict.fromkeys((item.sop_uid for item in batch), interrupted))
            raise
        finally:
            self._pass_turn(study)
        _settle(batch, results)

    def _claim(self, leader: _Pending) -> list[_Pending]:
        """The leader and the waiting instances after it, as the caps allow; never one
        that holds a turn itself (it leads a request of its own)."""
        queue = self._waiting[leader.study_uid]
        queue.remove(leader)
        batch, size = [leader], leader.size
        for waiting in list(queue):
            if len(batch) >= self.config.batch_max_instances:
                break
            if waiting.turn.done():
                continue
            if size + waiting.size > self.config.batch_max_bytes:
                break
            size += waiting.size
            batch.append(waiting)
            queue.remove(waiting)
        return batch

    def _pass_turn(self, study: str) -> None:
        """A request of study ended (or a turn went unused): the first waiting instance
        without a turn leads the next one; with none, the study has one request fewer."""
        queue = self._waiting.get(study, ())
        for waiting in queue:
            if not waiting.turn.done():
                waiting.turn.set_result(None)
                return
        self._leading[study] -= 1
        if not self._leading[study]:
            del self._leading[study]
            if not queue:
                self._waiting.pop(study, None)

    def _withdraw(self, item: _Pending) -> None:
        """A waiting send was cancelled (shutdown): leave the queue, hand on a held turn."""
        queue = self._waiting.get(item.study_uid)
        if queue is not None and item in queue:
            queue.remove(item)
        if item.turn.done():
            self._pass_turn(item.study_uid)


def _as_result(exc: Exception) -> stow.Result:
    if isinstance(exc, SendQueueError):
        return exc
    return TransientError(f"STOW-RS request failed: {exc!r}", reason_class="http-io-error")


def _settle(batch: list[_Pending], results: dict[str, stow.Result]) -> None:
    for item in batch:
        if item.done.done():
            continue  # its task was cancelled
        result = results[item.sop_uid]
        if isinstance(result, str):
            item.done.set_result(result)
        else:
            item.done.set_exception(result)


def _unwrap(result: stow.Result) -> str:
    if isinstance(result, str):
        return result
    raise result
