"""`[sender] processes`, and the loaded config handed whole to a child process."""

import pytest

from sendqueue.shared.config import config_from_json, config_to_json, parse_config
from sendqueue.shared.errors import ConfigError

DESTINATIONS = [
    {"name": "pacs", "host": "127.0.0.1", "port": 11112},
    {"name": "cloud", "kind": "dicomweb", "url": "https://127.0.0.1:8443/dicom-web"},
    {"name": "peer", "kind": "orthanc", "url": "http://127.0.0.1:8043", "concurrency": 8},
]
BASE = {"destinations": DESTINATIONS, "routes": [{"destinations": ["pacs", "cloud", "peer"]}]}


def config_with(**sender):
    return parse_config({**BASE, "sender": sender}, environ={})


@pytest.mark.parametrize(("cpus", "expected"), [(1, 1), (2, 1), (3, 1), (4, 2), (16, 8)])
def test_auto_runs_one_process_per_two_cpus(cpus, expected):
    assert config_with().sender.process_count(cpus) == expected


def test_auto_is_capped():
    assert config_with().sender.process_count(1024) == 64


def test_a_number_is_taken_as_it_is():
    assert config_with(processes=3).sender.process_count(1) == 3


@pytest.mark.parametrize("bad", [0, -1, 65, "two", 1.5])
def test_a_bad_count_is_refused_naming_the_key(bad):
    with pytest.raises(ConfigError, match="processes"):
        config_with(processes=bad)


def test_the_config_goes_to_a_child_process_unchanged():
    config = parse_config(
        {
            **BASE,
            "orthanc": {"password": "from-the-environment"},
            "sender": {"probe_min": "250ms", "processes": 2},
            "retry": {"delays": ["10s", "1m"]},
        },
        environ={},
    )
    again = config_from_json(config_to_json(config))
    assert again == config
    assert again.retry.delays[1] == 60 and type(again.retry.delays[1]).__name__ == "Duration"
    assert [d.kind for d in again.destinations] == ["dicom", "dicomweb", "orthanc"]


def test_a_garbled_handover_is_a_config_error():
    with pytest.raises(ConfigError):
        config_from_json(b'{"sender": {"processes": 0}}')
