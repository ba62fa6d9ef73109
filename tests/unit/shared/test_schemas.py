"""Bus messages: round trips, tolerance of unknown fields, rejection of garbage."""

import msgspec
import pytest

from sendqueue.shared.schemas import Failure, SendJob, decode_bus_message, decode_job, encode, fresh


def _job(**kw):
    return SendJob(id="j1", destination="pacs", orthanc_id="o1", **kw)


def test_job_and_failure_round_trip_through_the_bus_decoder():
    job = _job(attempts=2, last_error="x")
    failure = Failure(destination="pacs", job=job, permanent=False, reason="r", reason_class="c")
    assert decode_bus_message(encode(job)) == job
    assert decode_bus_message(encode(failure)) == failure


def test_unknown_fields_from_newer_versions_are_ignored():
    body = b'{"type":"job","id":"j","destination":"d","orthanc_id":"o","future":1}'
    assert decode_job(body).id == "j"


@pytest.mark.parametrize("body", [b"", b"garbage", b"{}", b'{"type":"job"}', b"[1,2]"])
def test_garbage_is_a_decode_error(body):
    with pytest.raises(msgspec.DecodeError):
        decode_job(body)


def test_fresh_forgets_failures_and_parking():
    job = fresh(
        _job(
            attempts=4,
            last_error="x",
            reason_class="y",
            parked_at=1.0,
            first_failed_at=1.0,
            last_failed_at=2.0,
        )
    )
    assert (job.attempts, job.last_error, job.parked_at, job.first_failed_at) == (0, "", None, None)
