"""[[destinations]] keys per kind: defaults, start-up errors naming the key, secrets from env."""

from __future__ import annotations

from typing import Any

import pytest

from sendqueue.shared.config import parse_config
from sendqueue.shared.errors import ConfigError


def config(*destinations: dict[str, Any], environ: dict[str, str] | None = None) -> Any:
    routes = [{"destinations": [d["name"] for d in destinations]}]
    return parse_config({"destinations": list(destinations), "routes": routes}, environ or {})


def test_dicom_stays_the_default_kind_with_its_old_keys():
    [dest] = config({"name": "pacs", "host": "10.0.0.1", "port": 11112}).destinations
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
    )
    pacs, peer, cloud = parsed.destinations
    assert parsed.routes[0].destinations == ["pacs", "peer", "cloud"]
    assert (pacs.concurrency, pacs.calling_aet, pacs.dimse_timeout) == (4, "EDGE", 120)
    assert parsed.max_attempts_for("pacs") == 3 and parsed.delays_for("pacs") == [1, 5]
    assert pacs.tls is not None and pacs.tls.verify is True and not pacs.transcode
    assert (peer.kind, peer.http_timeout) == ("orthanc", 30)
    assert (cloud.batch_max_instances, cloud.headers) == (10, {"X-Api-Key": "k"})


@pytest.mark.parametrize(
    ("destination", "fragment"),
    [
        ({"kind": "dicom"}, "host is required"),
        ({"host": "h", "url": "http://x"}, "url is for kinds"),
        ({"host": "h", "token": "t"}, "token is for kinds"),
        ({"host": "h", "batch_max_instances": 5}, "batch_max_instances"),
        ({"kind": "orthanc"}, "url must start with"),
        ({"kind": "orthanc", "url": "ftp://x"}, "url must start with"),
        ({"kind": "orthanc", "url": "http://x", "host": "h"}, "host is for kind 'dicom'"),
        ({"kind": "orthanc", "url": "http://x", "username": "u", "token": "t"}, "not both"),
        ({"kind": "orthanc", "url": "http://x", "password": "p"}, "password needs username"),
        ({"kind": "orthanc", "url": "http://x", "tls": {}}, "tls needs an https:// url"),
        ({"kind": "orthanc", "url": "https://x", "batch_max_bytes": 9_000_000}, "batch_max"),
        ({"kind": "dicomweb", "url": "https://x", "batch_max_instances": 0}, "1..1000"),
        ({"kind": "dicomweb", "url": "https://x", "batch_max_bytes": 10}, "at least 1048576"),
        ({"kind": "dicomweb", "url": "https://x", "headers": {"Content-Type": "a"}}, "headers"),
        ({"kind": "dicomweb", "url": "https://x", "http_timeout": 0}, "http_timeout"),
        ({"kind": "webdav", "url": "https://x"}, "kind"),
        ({"host": "h", "tls": {"ca_file": "/nonexistent/ca.pem"}}, "tls.ca_file"),
        ({"host": "h", "tls": {"cert_file": "/etc/hosts"}}, "tls.cert_file and tls.key_file"),
        ({"host": "h", "tls": {"verfy": False}}, "verfy"),
    ],
)
def test_invalid_destinations_name_the_key(destination, fragment):
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
        environ=environ,
    )
    assert parsed.destination("peer-1").password == "from-env"
    assert parsed.destination("cloud").token == "env-token"


def test_an_env_secret_that_breaks_the_rules_is_a_config_error():
    with pytest.raises(ConfigError, match="not both"):
        config(
            {"name": "peer", "kind": "orthanc", "url": "http://p", "username": "u"},
            environ={"SENDQUEUE_DEST_PEER_TOKEN": "t"},
        )
    with pytest.raises(ConfigError, match="HTTP kinds only"):
        config({"name": "pacs", "host": "h"}, environ={"SENDQUEUE_DEST_PACS_PASSWORD": "p"})
