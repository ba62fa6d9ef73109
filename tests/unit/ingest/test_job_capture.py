"""The watch of Orthanc's job history: what is captured, when, once; what counts as missed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from sendqueue.services.ingest.handled_jobs import HandledJobs
from sendqueue.services.ingest.job_capture import JobCapture
from sendqueue.services.ingest.metrics import IngestMetrics
from sendqueue.services.ingest.orthanc_jobs import JobTargets, orthanc_time, store_job
from sendqueue.shared.config import parse_config
from sendqueue.shared.errors import InstanceNotFound
from sendqueue.shared.resolver import Resolver
from sendqueue.shared.schemas import decode_bus_message
from sendqueue.shared.topology import Names
from tests.unit.fakes import FakeOrthanc, FakePublisher, eventually

MODALITIES = {"pacs": {"AET": "PACS", "Host": "127.0.0.1", "Port": 104}}
PEERS = {"archive": {"Url": "http://127.0.0.1:8043/", "Username": "u"}}


class OrthancWithJobs(FakeOrthanc):
    def __init__(self) -> None:
        super().__init__()
        self.jobs: list[dict[str, Any]] = []
        self.lua: str | None = None

    async def get_json(self, path: str, params: dict[str, str] | None = None) -> Any:
        if path == "/jobs":
            self.calls.append(path)
            self._fail_if_asked_to(path)
            return list(self.jobs)
        if path == "/modalities":
            return MODALITIES
        if path == "/peers":
            return PEERS
        return await super().get_json(path, params)

    async def run_lua(self, script: str) -> str | None:
        return self.lua

    async def exists(self, path: str) -> bool:
        try:
            await self.get_json(path)
        except InstanceNotFound:
            return False
        return True


def job(job_id: str, state: str = "Failure", *, resources: list[str], **extra: Any) -> dict:
    return {
        "ID": job_id,
        "Type": extra.pop("type", "DicomModalityStore"),
        "State": state,
        "ErrorCode": extra.pop("code", 9 if state == "Failure" else 0),
        "ErrorDescription": "Error in the network protocol" if state == "Failure" else "Success",
        "ErrorDetails": "connection refused" if state == "Failure" else "",
        "CompletionTime": "20261206T125744.500000",
        "Content": {
            "RemoteAet": "PACS",
            "ParentResources": resources,
            "InstancesCount": len(resources),
            "Description": "REST API",
            **extra,
        },
    }


def config(tmp_path: Path, **ingest: Any):
    return parse_config(
        {
            "ingest": {"state_dir": str(tmp_path), **ingest},
            "destinations": [
                {"name": "pacs-dest", "host": "127.0.0.1", "orthanc_modality": "pacs"},
                {
                    "name": "archive-dest",
                    "kind": "orthanc",
                    "url": "http://127.0.0.1:8043",
                    "orthanc_peer": "archive",
                },
            ],
        },
        environ={},
    )


@pytest.fixture
def orthanc() -> OrthancWithJobs:
    fake = OrthancWithJobs()
    for n in range(3):
        fake.store(f"i{n}", {"SOPInstanceUID": f"1.2.{n}"})
    return fake


def make_capture(tmp_path: Path, orthanc: OrthancWithJobs, publisher: FakePublisher, **ingest):
    registry = CollectorRegistry()
    capture = JobCapture(
        config=config(tmp_path, **ingest),
        orthanc=orthanc,  # type: ignore[arg-type]
        resolver=Resolver(orthanc),  # type: ignore[arg-type]
        publisher=publisher,  # type: ignore[arg-type]
        names=Names("sq"),
        metrics=IngestMetrics(registry),
    )
    return capture, registry


def queued(publisher: FakePublisher) -> list[Any]:
    return [decode_bus_message(p.body) for p in publisher.to("sq.work")]


async def test_a_failed_job_is_captured_at_the_next_read_with_its_error_as_first_attempt(
    tmp_path, orthanc
):
    publisher = FakePublisher()
    capture, registry = make_capture(tmp_path, orthanc, publisher)
    orthanc.jobs = [job("j1", resources=["i0", "i1"])]
    # The first read only notes the failure: a job resubmitted at once is then seen running
    await capture.read_history()
    assert queued(publisher) == []
    await capture.read_history()
    jobs = queued(publisher)
    assert {j.orthanc_id for j in jobs} == {"i0", "i1"}
    assert all(j.destination == "pacs-dest" and j.attempts == 1 for j in jobs)
    assert all(j.source == "orthanc-job" and j.orthanc_job.id == "j1" for j in jobs)
    assert "Error in the network protocol: connection refused" in jobs[0].last_error
    assert jobs[0].orthanc_job.instances == 2
    assert jobs[0].first_failed_at == orthanc_time("20261206T125744.5")
    # Read again, and after a restart: nothing more
    await capture.read_history()
    again, _ = make_capture(tmp_path, orthanc, publisher)
    again._handled.load()
    await again.read_history()
    await again.read_history()
    assert len(queued(publisher)) == 2
    assert registry.get_sample_value("sendqueue_orthanc_jobs_total", {"outcome": "captured"}) == 1


async def test_a_job_resubmitted_before_the_second_read_and_then_succeeding_is_not_sent(
    tmp_path, orthanc
):
    publisher = FakePublisher()
    capture, registry = make_capture(tmp_path, orthanc, publisher)
    orthanc.jobs = [job("j1", resources=["i0"])]
    await capture.read_history()
    orthanc.jobs = [job("j1", "Running", resources=["i0"])]
    await capture.read_history()
    orthanc.jobs = [job("j1", "Success", resources=["i0"])]
    await capture.read_history()
    await capture.read_history()
    assert queued(publisher) == []
    assert registry.get_sample_value("sendqueue_orthanc_jobs_total", {"outcome": "succeeded"}) == 1


async def test_a_deleted_resource_is_parked_as_not_found_and_a_peer_job_goes_to_its_peer(
    tmp_path, orthanc
):
    publisher = FakePublisher()
    capture, _ = make_capture(tmp_path, orthanc, publisher)
    orthanc.jobs = [
        job(
            "j2",
            type="OrthancPeerStore",
            resources=["i2", "gone"],
            Peer=["http://127.0.0.1:8043", "u", ""],
        )
    ]
    await capture.read_history()
    await capture.read_history()
    assert [(j.destination, j.orthanc_id) for j in queued(publisher)] == [("archive-dest", "i2")]
    [parked] = [decode_bus_message(p.body) for p in publisher.to("sq.failed")]
    assert parked.permanent and parked.reason_class == "not-found"
    assert parked.job.orthanc_id == "gone" and parked.job.orthanc_job.id == "j2"


async def test_cancelled_unmapped_and_other_jobs_are_not_captured(tmp_path, orthanc):
    publisher = FakePublisher()
    capture, registry = make_capture(tmp_path, orthanc, publisher)
    other_aet = job("j3", resources=["i0"])
    other_aet["Content"]["RemoteAet"] = "ELSEWHERE"
    orthanc.jobs = [
        job("j1", resources=["i0"], code=37),
        other_aet,
        {"ID": "j4", "Type": "ResourceModification", "State": "Failure"},
    ]
    await capture.read_history()
    await capture.read_history()
    assert queued(publisher) == []
    assert registry.get_sample_value("sendqueue_orthanc_jobs_total", {"outcome": "unmapped"}) == 1
    assert registry.get_sample_value("sendqueue_orthanc_jobs_total", {"outcome": "cancelled"}) == 1


async def test_a_broker_refusal_leaves_the_job_unhandled_for_the_next_read(tmp_path, orthanc):
    publisher = FakePublisher()
    capture, _ = make_capture(tmp_path, orthanc, publisher)
    orthanc.jobs = [job("j1", resources=["i0"])]
    await capture.read_history()
    publisher.refuse()
    with pytest.raises(Exception, match="did not confirm"):
        await capture.read_history()
    assert "j1" not in HandledJobs(str(tmp_path)).ids()
    publisher.confirm()
    await capture.read_history()
    assert [j.orthanc_id for j in queued(publisher)] == ["i0"]


async def test_a_running_job_that_leaves_the_history_unread_is_counted_missed(
    tmp_path, orthanc, caplog
):
    capture, registry = make_capture(tmp_path, orthanc, FakePublisher())
    orthanc.jobs = [job("j1", "Running", resources=["i0"])]
    await capture.read_history()
    orthanc.jobs = [job(f"n{k}", "Success", resources=["i0"]) for k in range(10)]
    await capture.read_history()
    assert registry.get_sample_value("sendqueue_orthanc_jobs_missed_total") == 1
    assert "left Orthanc's job history before ingest could read" in caplog.text
    # A full history that turns over completely between two reads: at least one more
    orthanc.jobs = [job(f"m{k}", "Success", resources=["i0"]) for k in range(10)]
    await capture.read_history()
    assert registry.get_sample_value("sendqueue_orthanc_jobs_missed_total") == 2


async def test_a_small_jobs_history_size_is_warned_about(tmp_path, orthanc, caplog):
    orthanc.lua = "10\n"
    capture, _ = make_capture(tmp_path, orthanc, FakePublisher())
    await capture._evidence.read_history_size(orthanc)
    assert "JobsHistorySize is 10 (read from Orthanc)" in caplog.text


async def test_without_lua_the_history_size_is_learned_from_how_the_history_turns_over(
    tmp_path, orthanc, caplog
):
    capture, _ = make_capture(tmp_path, orthanc, FakePublisher())
    orthanc.jobs = [job(f"a{k}", "Success", resources=["i0"]) for k in range(5)]
    await capture.read_history()
    orthanc.jobs = [*orthanc.jobs[1:], job("a5", "Success", resources=["i0"])]
    await capture.read_history()
    assert "JobsHistorySize is 5 (seen: new jobs push old ones out)" in caplog.text


def test_targets_match_modalities_by_aet_and_peers_by_url(tmp_path):
    targets = JobTargets(config(tmp_path), MODALITIES, PEERS)
    modality_job = store_job(job("j", resources=["i"]))
    peer_job = store_job(
        job("k", type="OrthancPeerStore", resources=["i"], Peer=["http://127.0.0.1:8043"])
    )
    assert modality_job is not None and peer_job is not None
    assert targets.destinations(modality_job) == ["pacs-dest"]
    assert targets.destinations(peer_job) == ["archive-dest"]
    assert JobTargets(config(tmp_path), {}, {}).unknown == ["pacs-dest", "archive-dest"]
    # Orthanc's ids are case-sensitive, as its REST routes are
    assert JobTargets(config(tmp_path), {"PACS": MODALITIES["pacs"]}, PEERS).unknown == [
        "pacs-dest"
    ]


def test_handled_ids_long_gone_from_orthanc_are_forgotten(tmp_path):
    handled = HandledJobs(str(tmp_path))
    handled.add("old", now=0.0)
    handled.add("listed", now=0.0)
    handled.still_listed(["listed"], now=8 * 86400.0)
    handled.save()
    reread = HandledJobs(str(tmp_path))
    reread.load()
    assert reread.ids() == {"listed"}


def test_a_corrupt_handled_file_is_an_error_naming_it(tmp_path):
    (tmp_path / "orthanc-jobs-handled.json").write_text("{nope")
    with pytest.raises(ValueError, match="corrupt state file"):
        HandledJobs(str(tmp_path)).load()


async def test_a_failed_stow_job_cannot_be_captured_but_is_counted_and_logged(
    tmp_path, orthanc, caplog
):
    publisher = FakePublisher()
    capture, registry = make_capture(tmp_path, orthanc, publisher)
    orthanc.jobs = [
        {
            "ID": "w1",
            "Type": "DicomWebStowClient",
            "State": "Failure",
            "ErrorCode": 1,
            "Content": {"FunctionErrorDescription": "Error in the network protocol"},
        }
    ]
    await capture.read_history()
    await capture.read_history()
    assert publisher.published == []
    assert (
        registry.get_sample_value("sendqueue_orthanc_jobs_total", {"outcome": "uncapturable"}) == 1
    )
    assert "DICOMweb STOW-RS job w1 failed (Error in the network protocol)" in caplog.text


async def test_orthanc_down_is_counted_as_stage_orthanc_and_the_watch_goes_on(tmp_path, orthanc):
    publisher = FakePublisher()
    capture, registry = make_capture(tmp_path, orthanc, publisher, poll_interval="10ms")
    orthanc.up = False
    orthanc.jobs = [job("j1", resources=["i0"])]
    stop = asyncio.Event()
    task = asyncio.create_task(capture.run(stop))
    try:
        await eventually(
            lambda: (
                (
                    registry.get_sample_value("sendqueue_ingest_errors_total", {"stage": "orthanc"})
                    or 0
                )
                >= 1
            )
        )
        assert not capture.healthy
        orthanc.up = True
        await eventually(lambda: len(publisher.to("sq.work")) == 1)
        assert capture.healthy
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_a_job_ingest_cancelled_to_take_over_is_captured_even_after_a_crash(
    tmp_path, orthanc
):
    # Given ingest recorded the take-over and cancelled the job, then stopped before queuing
    first, _ = make_capture(tmp_path, orthanc, FakePublisher())
    first.intend_take_over("j1")
    orthanc.jobs = [job("j1", resources=["i0", "i1"], code=37)]
    # When ingest starts again
    publisher = FakePublisher()
    again, _ = make_capture(tmp_path, orthanc, publisher)
    again._handled.load()
    await again.read_history()
    await again.read_history()
    # Then the cancelled job's instances are queued, as not yet attempted
    jobs = queued(publisher)
    assert sorted(j.orthanc_id for j in jobs) == ["i0", "i1"]
    assert all(j.attempts == 0 and j.orthanc_job.id == "j1" for j in jobs)
    # While a job cancelled by someone else stays cancelled
    orthanc.jobs.append(job("j2", resources=["i2"], code=37))
    await again.read_history()
    await again.read_history()
    assert len(queued(publisher)) == 2


async def test_a_failed_job_pushed_out_before_its_second_read_is_captured_from_the_first(
    tmp_path, orthanc
):
    publisher = FakePublisher()
    capture, registry = make_capture(tmp_path, orthanc, publisher)
    orthanc.jobs = [job("j1", resources=["i0"])]
    await capture.read_history()
    orthanc.jobs = [job(f"n{k}", "Success", resources=["i1"]) for k in range(3)]
    await capture.read_history()
    assert [(j.orthanc_id, j.orthanc_job.id) for j in queued(publisher)] == [("i0", "j1")]
    assert registry.get_sample_value("sendqueue_orthanc_jobs_missed_total") == 0
