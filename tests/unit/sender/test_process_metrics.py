"""Several sender processes' metrics served as one page, labelled by process."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sendqueue.services.sender.process_metrics import merge_expositions


def child_page(sent: int, up: int) -> str:
    registry = CollectorRegistry()
    Counter("sendqueue_jobs_sent", "sent", ["destination"], registry=registry).labels("a").inc(sent)
    Gauge("sendqueue_destination_up", "up", ["destination"], registry=registry).labels("a").set(up)
    histogram = Histogram("sendqueue_send_seconds", "s", ["destination"], registry=registry)
    histogram.labels("a").observe(0.2)
    return generate_latest(registry).decode()


def samples(page: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(page.decode())
        for s in family.samples
    }


def test_each_child_sample_keeps_its_value_under_its_process_label():
    own = CollectorRegistry()
    Gauge("sendqueue_sender_processes", "running", registry=own).set(2)
    page = samples(merge_expositions({"1": child_page(3, 1), "2": child_page(5, 0)}, own))
    assert page[("sendqueue_sender_processes", ())] == 2
    sent = (("destination", "a"), ("process", "1"))
    assert page[("sendqueue_jobs_sent_total", sent)] == 3
    assert page[("sendqueue_jobs_sent_total", (("destination", "a"), ("process", "2")))] == 5
    assert page[("sendqueue_destination_up", (("destination", "a"), ("process", "2")))] == 0
    bucket = (("destination", "a"), ("le", "+Inf"), ("process", "1"))
    assert page[("sendqueue_send_seconds_bucket", bucket)] == 1


def test_each_family_is_described_once():
    page = merge_expositions({"1": child_page(1, 1), "2": child_page(1, 1)}, CollectorRegistry())
    lines = page.decode().splitlines()
    assert lines.count("# TYPE sendqueue_jobs_sent_total counter") == 1
    assert lines.count("# TYPE sendqueue_send_seconds histogram") == 1


def test_no_child_answering_leaves_the_supervisors_own_metrics():
    own = CollectorRegistry()
    Gauge("sendqueue_sender_processes", "running", registry=own).set(0)
    assert samples(merge_expositions({}, own)) == {("sendqueue_sender_processes", ()): 0}
