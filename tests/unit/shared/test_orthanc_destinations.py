"""capture_failed_jobs = "all": Orthanc's modalities and peers as destinations (pure part)."""

from __future__ import annotations

import pytest

from sendqueue.shared.config import (
    DicomDestinationConfig,
    OrthancDestinationConfig,
    parse_config,
)
from sendqueue.shared.errors import ConfigError
from sendqueue.shared.orthanc_destinations import destinations_from_orthanc

MODALITIES = {
    "pacs": {"AET": "PACS", "Host": "10.0.0.5", "Port": 104, "LocalAet": "", "UseDicomTls": False},
    "ct room": {"AET": "CT1", "Host": "127.0.0.1", "Port": 11112, "LocalAet": "ROUTER"},
    "broken": {"AET": "X", "Host": "127.0.0.1", "Port": 0},
}
PEERS = {"archive": {"Url": "https://archive.example:8043/", "Username": "sq", "Password": None}}


def config(**extra):
    return parse_config({"ingest": {"capture_failed_jobs": "all"}, **extra}, environ={})


def test_every_modality_and_peer_becomes_a_destination_with_its_settings():
    added = destinations_from_orthanc(config(), MODALITIES, PEERS, "ORTHANC")
    by_name = {d.name: d for d in added}
    assert set(by_name) == {"pacs", "ct-room", "archive"}  # "broken" has port 0
    pacs, ct = by_name["pacs"], by_name["ct-room"]
    assert isinstance(pacs, DicomDestinationConfig) and isinstance(ct, DicomDestinationConfig)
    assert (pacs.host, pacs.port, pacs.called_aet, pacs.calling_aet) == (
        "10.0.0.5",
        104,
        "PACS",
        "ORTHANC",  # the peer knows Orthanc's AE title
    )
    assert (ct.calling_aet, ct.orthanc_modality) == ("ROUTER", "ct room")
    archive = by_name["archive"]
    assert isinstance(archive, OrthancDestinationConfig)
    assert (archive.url, archive.username, archive.orthanc_peer) == (
        "https://archive.example:8043/",
        "sq",
        "archive",
    )


def test_a_modality_a_destination_already_stands_for_is_left_to_it_and_names_never_clash():
    cfg = config(
        destinations=[
            {"name": "mine", "host": "10.0.0.5", "orthanc_modality": "pacs"},
            {"name": "archive", "kind": "orthanc", "url": "http://127.0.0.1:1"},
        ]
    )
    added = destinations_from_orthanc(cfg, MODALITIES, PEERS, "ORTHANC")
    assert [d.name for d in added] == ["ct-room", "orthanc-peer-archive"]


def test_orthanc_keys_belong_to_their_kind():
    with pytest.raises(ConfigError, match="orthanc_peer is for kind 'orthanc' only"):
        parse_config(
            {"destinations": [{"name": "d", "host": "h", "orthanc_peer": "x"}]}, environ={}
        )
    with pytest.raises(ConfigError, match="capture_failed_jobs"):
        parse_config({"ingest": {"capture_failed_jobs": "some"}}, environ={})
