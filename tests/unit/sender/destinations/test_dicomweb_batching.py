"""kind = "dicomweb" batching: a group commit per study with up to half of `concurrency`
requests in flight; every instance is settled once, and nothing is left behind."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sendqueue.services.sender.destinations.dicomweb import DicomWebDestination, _Pending
from sendqueue.shared.config import parse_config


def destination(concurrency: int, batch: int) -> DicomWebDestination:
    table = {
        "name": "web",
        "kind": "dicomweb",
        "url": "http://127.0.0.1:9/dicom-web",
        "concurrency": concurrency,
        "batch_max_instances": batch,
    }
    config = parse_config({"destinations": [table]}, environ={}).destinations[0]
    return DicomWebDestination(config)  # type: ignore[arg-type]


class FakePeer:
    """Stands in for _stow: records the batches and how many requests run per study."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.batches: list[list[str]] = []
        self.in_flight: dict[str, int] = {}
        self.most: dict[str, int] = {}

    async def stow(self, batch: list[_Pending]) -> dict[str, Any]:
        study = batch[0].study_uid
        assert {item.study_uid for item in batch} == {study}
        self.in_flight[study] = self.in_flight.get(study, 0) + 1
        self.most[study] = max(self.most.get(study, 0), self.in_flight[study])
        self.batches.append([item.sop_uid for item in batch])
        await asyncio.sleep(self.rng.random() / 200)
        self.in_flight[study] -= 1
        return {item.sop_uid: "Stored" for item in batch}


async def send_all(dest: DicomWebDestination, peer: FakePeer, items: list[tuple[str, str]]) -> Any:
    dest._stow = peer.stow  # type: ignore[method-assign]

    async def one(sop: str, study: str) -> str:
        await asyncio.sleep(peer.rng.random() / 500)  # arrivals spread out
        return await dest._send(_Pending(b"x", sop, study, 100))

    return await asyncio.gather(*(one(sop, study) for sop, study in items))


@settings(max_examples=60, deadline=None)
@given(
    concurrency=st.integers(1, 8),
    batch=st.integers(2, 6),
    studies=st.lists(st.integers(0, 2), min_size=1, max_size=30),
    seed=st.integers(0, 1000),
)
def test_every_instance_once_never_more_requests_per_study_than_allowed(
    concurrency: int, batch: int, studies: list[int], seed: int
) -> None:
    items = [(f"1.2.{n}", f"study-{study}") for n, study in enumerate(studies)]
    dest = destination(concurrency, batch)
    peer = FakePeer(random.Random(seed))
    results = asyncio.run(send_all(dest, peer, items))
    assert results == ["Stored"] * len(items)
    sent = [uid for request in peer.batches for uid in request]
    assert sorted(sent) == sorted(uid for uid, _ in items)  # each once
    assert all(len(request) <= batch for request in peer.batches)
    assert max(peer.most.values()) <= max(1, concurrency // 2)
    assert dest._leading == {} and dest._waiting == {}  # nothing left behind


async def test_two_requests_of_one_study_run_at_once_and_batches_still_form() -> None:
    dest = destination(concurrency=4, batch=16)
    peer = FakePeer(random.Random(1))
    items = [(f"1.2.{n}", "study") for n in range(40)]
    assert await send_all(dest, peer, items) == ["Stored"] * 40
    assert peer.most["study"] == 2
    assert len(peer.batches) < 40


async def test_a_waiting_send_cancelled_hands_its_turn_on() -> None:
    dest = destination(concurrency=2, batch=4)  # one request per study
    release = asyncio.Event()
    sent: list[list[str]] = []

    async def slow_stow(batch: list[_Pending]) -> dict[str, Any]:
        sent.append([item.sop_uid for item in batch])
        await release.wait()
        return {item.sop_uid: "Stored" for item in batch}

    dest._stow = slow_stow  # type: ignore[method-assign]
    first = asyncio.create_task(dest._send(_Pending(b"x", "1", "s", 1)))
    await asyncio.sleep(0.01)
    waiting = asyncio.create_task(dest._send(_Pending(b"x", "2", "s", 1)))
    later = asyncio.create_task(dest._send(_Pending(b"x", "3", "s", 1)))
    await asyncio.sleep(0.01)
    waiting.cancel()
    release.set()
    assert await first == "Stored" and await later == "Stored"
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert sent == [["1"], ["3"]]
    assert dest._leading == {} and dest._waiting == {}


def test_the_leaders_per_study_follow_concurrency() -> None:
    assert destination(1, 4)._leaders_per_study == 1
    assert destination(4, 4)._leaders_per_study == 2
    assert destination(9, 4)._leaders_per_study == 4
