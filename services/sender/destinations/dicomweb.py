"""kind = "dicomweb": STOW-RS to url + "/studies", one instance or one study batch per request.

Batching (batch_max_instances > 1) is a group commit per study: while a request for a
study is in flight, instances of that study that the consumer spools meanwhile wait; the
next request takes as many of them as the caps allow (count, bytes; one instance bigger
than batch_max_bytes goes alone). So batches form only from instances in flight at the
same time: at most `concurrency` of them, and none is held back waiting for more.
Each instance still gets its own outcome from the answer's per-instance lists.

A 409 is permanent for every instance of the request (the issue's contract), whatever
the per-instance FailureReason; 401/403 pause the destination (http.py).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sendqueue.services.sender.destinations import stow
from sendqueue.services.sender.destinations.http import (
    HttpPeer,
    StreamedBody,
    raise_for_http,
    read_answer,
)
from sendqueue.services.sender.destinations.instance import read_meta, read_study_uid
from sendqueue.shared.config import DicomWebDestinationConfig
from sendqueue.shared.errors import PermanentError, SendQueueError, TransientError

_ACCEPT = {"Accept": "application/dicom+json"}


@dataclass(eq=False)
class _Pending:
    """One instance waiting to be part of a STOW-RS request."""

    path: Path
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


class DicomWebDestination:
    protocol = "dicomweb"

    def __init__(self, config: DicomWebDestinationConfig) -> None:
        self.config = config
        self.name = config.name
        self._peer = HttpPeer(config)
        self._batching = config.batch_max_instances > 1
        self._waiting: dict[str, deque[_Pending]] = {}
        self._busy: set[str] = set()
        self.requests_sent = 0  # for tests and logs: how many STOW-RS requests

    async def send(self, path: Path) -> str:
        sop_uid, study_uid, size = await asyncio.to_thread(_read, path, self._batching)
        item = _Pending(path, sop_uid, study_uid, size)  # its futures need this loop
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
        paths = [item.path for item in batch]

        def body() -> StreamedBody:
            parts = stow.body_parts(paths, boundary)
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
        queue = self._waiting.setdefault(item.study_uid, deque())
        queue.append(item)
        if item.study_uid not in self._busy:
            self._busy.add(item.study_uid)
            item.turn.set_result(None)
        try:
            waits: list[asyncio.Future[Any]] = [item.turn, item.done]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self._withdraw(item)
            raise
        if not item.done.done():
            await self._lead(item.study_uid)
        return item.done.result()

    async def _lead(self, study: str) -> None:
        """Send the next batch of study, settle each of its instances, pass the turn on."""
        batch = self._claim(study)
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

    def _claim(self, study: str) -> list[_Pending]:
        queue = self._waiting[study]
        batch = [queue.popleft()]
        size = batch[0].size
        cfg = self.config
        while queue and len(batch) < cfg.batch_max_instances:
            if size + queue[0].size > cfg.batch_max_bytes:
                break
            size += queue[0].size
            batch.append(queue.popleft())
        return batch

    def _pass_turn(self, study: str) -> None:
        queue = self._waiting.get(study)
        if queue:
            queue[0].turn.set_result(None)
            return
        self._busy.discard(study)
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
