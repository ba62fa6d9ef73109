"""[[destinations]]: one Struct per kind; a key of another kind is an error naming it."""

from __future__ import annotations

import re
from typing import Any

import pytest

from sendqueue.shared.config import (
    DicomDestinationConfig,
    DicomWebDestinationConfig,
    OrthancDestinationConfig,
    parse_config,
)
from sendqueue.shared.errors import ConfigError

# The contract of docs/destinations.md: which keys belong to which kinds (besides the keys
# of every kind), each with a value that would be valid on its own kind.
DICOM_KEYS = {
    "host": "h",
    "port": 104,
    "called_aet": "PACS",
    "calling_aet": "EDGE",
    "acse_timeout": "30s",
    "dimse_timeout": "2m",
    "idle_timeout": "30s",
    "transcode": True,
}
HTTP_KEYS = {
    "url": "https://x",
    "username": "u",
    "password": "p",
    "token": "t",
    "headers": {},
    "http_timeout": "2m",
}
DICOMWEB_KEYS = {"batch_max_instances": 1, "batch_max_bytes": 64 * 1024 * 1024}
MINIMAL = {
    "dicom": {"host": "h"},
    "orthanc": {"kind": "orthanc", "url": "http://x"},
    "dicomweb": {"kind": "dicomweb", "url": "http://x"},
}


def config(*destinations: dict[str, Any], environ: dict[str, str] | None = None) -> Any:
    routes = [{"destinations": [d["name"] for d in destinations]}]
    return parse_config({"destinations": list(destinations), "routes": routes}, environ or {})


def foreign_keys() -> list[tuple[str, str, Any, str]]:
    """(kind, key of another kind, its value, the kinds the error must name)."""
    cases = []
    for kind in ("orthanc", "dicomweb"):
        cases += [(kind, key, value, "kind 'dicom' only") for key, value in DICOM_KEYS.items()]
    for kind in ("dicom", "orthanc"):
        cases += [(kind, k, v, "kind 'dicomweb' only") for k, v in DICOMWEB_KEYS.items()]
    cases += [
        ("dicom", key, value, "kinds 'orthanc' and 'dicomweb' only")
        for key, value in HTTP_KEYS.items()
    ]
    return cases


def test_a_table_without_kind_is_dicom_with_its_old_keys():
    [dest] = config({"name": "pacs", "host": "10.0.0.1", "port": 11112}).destinations
    assert isinstance(dest, DicomDestinationConfig)
    assert (dest.kind, dest.host, dest.port, dest.called_aet, dest.calling_aet) == (
        "dicom",
        "10.0.0.1",
        11112,
        "ANY-SCP",
        "SENDQUEUE",
    )
    assert dest.tls is None and dest.transcode is True


def test_a_route_with_one_destination_of_each_kind_and_its_own_options():
    parsed = config(
        {
            "name": "pacs",
            "kind": "dicom",
            "host": "h",
            "concurrency": 4,
            "calling_aet": "EDGE",
            "connect_timeout": "3s",
            "acse_timeout": "5s",
            "dimse_timeout": "2m",
            "max_attempts": 3,
            "delays": ["1s", "5s"],
            "transcode": False,
            "tls": {"ca_file": "/etc/hosts"},
        },
        {
            "name": "peer",
            "kind": "orthanc",
            "url": "http://peer:8042",
            "username": "u",
            "password": "p",
            "http_timeout": "30s",
            "max_attempts": 7,
        },
        {
            "name": "cloud",
            "kind": "dicomweb",
            "url": "https://x/dicom-web",
            "token": "t",
            "headers": {"X-Api-Key": "k"},
            "batch_max_instances": 10,
            "batch_max_bytes": 50_000_000,
        },
        environ={},
    )
    pacs, peer, cloud = parsed.destinations
    assert [type(d) for d in parsed.destinations] == [
        DicomDestinationConfig,
        OrthancDestinationConfig,
        DicomWebDestinationConfig,
    ]
    assert parsed.routes[0].destinations == ["pacs", "peer", "cloud"]
    assert (pacs.concurrency, pacs.calling_aet, pacs.dimse_timeout) == (4, "EDGE", 120)
    assert parsed.max_attempts_for("pacs") == 3 and parsed.delays_for("pacs") == [1, 5]
    assert pacs.tls is not None and pacs.tls.verify is True and not pacs.transcode
    assert (peer.kind, peer.http_timeout, parsed.max_attempts_for("peer")) == ("orthanc", 30, 7)
    assert parsed.delays_for("peer") == parsed.retry.delays
    assert (cloud.kind, cloud.batch_max_instances, cloud.headers) == (
        "dicomweb",
        10,
        {"X-Api-Key": "k"},
    )
    assert parsed.destination("cloud") is cloud and parsed.destination("nowhere") is None


@pytest.mark.parametrize(("kind", "key", "value", "kinds"), foreign_keys())
def test_a_key_of_another_kind_names_the_key_the_destination_and_the_kinds(kind, key, value, kinds):
    # Given a destination that is valid for its kind, when it gets a key of another kind
    table = {"name": "dest-1", **MINIMAL[kind], key: value}
    # Then the start-up fails, and the message says what is wrong and where it belongs
    with pytest.raises(ConfigError) as error:
        config(table)
    assert f"destination 'dest-1' (kind '{kind}'): {key} is for {kinds}" in str(error.value)
    assert "$.destinations[0]" in str(error.value)


def test_every_key_of_another_kind_is_named_at_once():
    with pytest.raises(ConfigError) as error:
        config(
            {"name": "backup", "kind": "orthanc", "url": "http://x", "port": 104, "transcode": True}
        )
    assert "port is for kind 'dicom' only; transcode is for kind 'dicom' only" in str(error.value)


def test_a_table_without_kind_gets_the_dicom_message_for_http_keys():
    with pytest.raises(ConfigError, match="'pacs' \\(kind 'dicom'\\): url is for kinds"):
        config({"name": "pacs", "host": "h", "url": "http://x"})


def test_an_unknown_kind_lists_the_kinds():
    with pytest.raises(ConfigError) as error:
        config({"name": "d", "kind": "webdav", "url": "https://x"})
    assert "kind must be one of 'dicom', 'orthanc', 'dicomweb', got 'webdav'" in str(error.value)


def test_a_key_of_no_kind_is_an_unknown_field():
    with pytest.raises(
        ConfigError, match=re.escape("unknown field `prot` - at `$.destinations[1]`")
    ):
        config({"name": "a", "host": "h"}, {"name": "b", "host": "h", "prot": 1})


@pytest.mark.parametrize(
    ("destination", "fragment"),
    [
        ({"kind": "dicom"}, "host is required"),
        ({"host": "h", "port": 0}, "port out of range"),
        ({"host": "h", "port": 65536}, "port out of range"),
        ({"host": "h", "called_aet": ""}, "called_aet must be 1-16 ASCII chars"),
        ({"host": "h", "calling_aet": "É"}, "calling_aet must be 1-16 ASCII chars"),
        ({"host": "h", "dimse_timeout": 0}, "dimse_timeout must be more than 0"),
        ({"host": "h", "acse_timeout": 0}, "acse_timeout must be more than 0"),
        ({"host": "h", "connect_timeout": 0}, "connect_timeout must be more than 0"),
        ({"host": "h", "concurrency": 65}, "concurrency must be 1..64"),
        ({"host": "h", "max_attempts": 0}, "max_attempts must be at least 1"),
        ({"host": "h", "delays": []}, "delays must not be empty"),
        ({"host": "h", "tls": {"ca_file": "/nonexistent/ca.pem"}}, "tls.ca_file"),
        ({"host": "h", "tls": {"cert_file": "/etc/hosts"}}, "tls.cert_file and tls.key_file"),
        ({"host": "h", "tls": {"verfy": False}}, "verfy"),
        ({"kind": "orthanc"}, "url must start with"),
        ({"kind": "orthanc", "url": "ftp://x"}, "url must start with"),
        ({"kind": "orthanc", "url": "http://x", "username": "u", "token": "t"}, "not both"),
        ({"kind": "orthanc", "url": "http://x", "password": "p"}, "password needs username"),
        ({"kind": "orthanc", "url": "http://x", "tls": {}}, "tls needs an https:// url"),
        ({"kind": "orthanc", "url": "https://x", "concurrency": 0}, "concurrency must be 1..64"),
        ({"kind": "dicomweb", "url": "https://x", "batch_max_instances": 0}, "1..1000"),
        ({"kind": "dicomweb", "url": "https://x", "batch_max_bytes": 10}, "at least 1048576"),
        ({"kind": "dicomweb", "url": "https://x", "headers": {"Content-Type": "a"}}, "headers"),
        ({"kind": "dicomweb", "url": "https://x", "http_timeout": 0}, "http_timeout"),
    ],
)
def test_each_check_of_a_kind_names_the_key(destination, fragment):
    with pytest.raises(ConfigError, match="invalid config") as error:
        config({"name": "d", **destination})
    assert fragment in str(error.value)


def test_passwords_and_tokens_come_from_the_environment():
    environ = {
        "SENDQUEUE_DEST_PEER_1_PASSWORD": "from-env",
        "SENDQUEUE_DEST_CLOUD_TOKEN": "env-token",
    }
    parsed = config(
        {"name": "peer-1", "kind": "orthanc", "url": "http://p", "username": "u"},
        {"name": "cloud", "kind": "dicomweb", "url": "https://c"},
        {"name": "pacs", "host": "h"},
        environ=environ,
    )
    assert parsed.destination("peer-1").password == "from-env"
    assert parsed.destination("cloud").token == "env-token"
    assert isinstance(parsed.destination("cloud"), DicomWebDestinationConfig)


def test_without_secrets_in_the_environment_a_destination_is_kept_as_it_is():
    [dest] = config({"name": "peer", "kind": "orthanc", "url": "http://p"}).destinations
    assert dest.with_environment({"SENDQUEUE_DEST_OTHER_TOKEN": "t"}) is dest


def test_an_env_secret_that_breaks_the_rules_is_a_config_error():
    with pytest.raises(ConfigError, match="not both"):
        config(
            {"name": "peer", "kind": "orthanc", "url": "http://p", "username": "u"},
            environ={"SENDQUEUE_DEST_PEER_TOKEN": "t"},
        )
    with pytest.raises(ConfigError, match="password needs username"):
        config(
            {"name": "peer", "kind": "dicomweb", "url": "http://p"},
            environ={"SENDQUEUE_DEST_PEER_PASSWORD": "p"},
        )


def test_an_env_secret_for_a_dicom_destination_is_a_config_error():
    with pytest.raises(ConfigError, match="SENDQUEUE_DEST_PACS_\\* is for HTTP kinds only"):
        config({"name": "pacs", "host": "h"}, environ={"SENDQUEUE_DEST_PACS_PASSWORD": "p"})


# -- prepare before sending, send windows --------------------------------------------------

ORTHANC_PEER = {"name": "peer", "kind": "orthanc", "url": "http://127.0.0.1:8043"}


def test_transfer_syntax_and_modify_become_one_modify_call_that_keeps_the_instance():
    modify = {"replace": {"InstitutionName": "Main"}, "remove": ["ImageComments"]}
    [dest] = config(
        {**ORTHANC_PEER, "transfer_syntax": "1.2.840.10008.1.2.4.70", "modify": modify}
    ).destinations
    assert dest.prepare_body() == {
        "Force": True,
        "Keep": ["SOPInstanceUID"],
        "Transcode": "1.2.840.10008.1.2.4.70",
        "Replace": {"InstitutionName": "Main"},
        "Remove": ["ImageComments"],
    }
    [plain] = config(ORTHANC_PEER).destinations
    assert plain.prepare_body() is None
    [stripped] = config({**ORTHANC_PEER, "modify": {"keep_private_tags": False}}).destinations
    assert stripped.prepare_body() == {
        "Force": True,
        "Keep": ["SOPInstanceUID"],
        "RemovePrivateTags": True,
    }


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"transfer_syntax": "JPEG"}, "transfer_syntax 'JPEG' is not a UID"),
        ({"modify": {"remove": ["SOPInstanceUID"]}}, "modify must leave SOPInstanceUID alone"),
        ({"modify": {"replace": {"InstitutionNam": "x"}}}, "'InstitutionNam' is not a DICOM"),
        ({"modify": {"rename": {}}}, "rename"),
        ({"send_window": "Mon-Fry 19:00-07:00"}, "'mon-fry' is not a day"),
        ({"send_window": []}, "send_window needs at least one window"),
        ({"send_window_timezone": "UTC"}, "send_window_timezone needs send_window"),
        ({"send_window": "19:00-07:00", "send_window_timezone": "Mars/X"}, "unknown time zone"),
    ],
)
def test_a_bad_prepare_or_window_key_stops_the_load_naming_it(extra, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        config({**ORTHANC_PEER, **extra})
