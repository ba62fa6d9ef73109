"""The names a route may match on, against the names a real Orthanc gives to tags."""

from __future__ import annotations

from typing import Any

from sendqueue.services.ingest.routing import Router
from sendqueue.shared.config import OrthancConfig, parse_config
from sendqueue.shared.dicom_keywords import is_known_tag_name
from sendqueue.shared.orthanc import OrthancClient
from sendqueue.shared.resolver import Resolver
from tests.support.dicom_factory import build_dataset, to_bytes
from tests.support.orthanc import OrthancProcess

#: Most of the tags Orthanc 1.10 indexes (its MainDicomTags), beyond build_dataset()'s.
INDEXED = {
    "OtherPatientIDs": "OTHER-1",  # retired, yet indexed under its keyword
    "StudyDescription": "CHEST",
    "InstitutionName": "NORTH",
    "RequestedProcedureDescription": "CT CHEST",
    "Manufacturer": "ACME",
    "StationName": "CT01",
    "SeriesDescription": "AXIAL",
    "BodyPartExamined": "CHEST",
    "ProtocolName": "ROUTINE",
    "OperatorsName": "Op^One",
    "ImageComments": "none",
    "AcquisitionNumber": 1,
    "ImagePositionPatient": [0, 0, 0],
    "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
    "TemporalPositionIdentifier": 1,  # retired, indexed
}


def instance_with_every_kind_of_tag() -> bytes:
    ds = build_dataset(extra=INDEXED)
    ds.add_new(0x00080010, "SH", "RC-1")  # RecognitionCode: retired, not indexed
    ds.add_new(0x60000010, "US", 4)  # OverlayRows: a repeating group
    ds.add_new(0x00290010, "LO", "SIEMENS CSA HEADER")  # private creator
    ds.add_new(0x00291008, "CS", "IMAGE NUM 4")  # CSAImageHeaderType in its dictionary
    return to_bytes(ds)


def reported_names(orthanc: OrthancProcess, instance_id: str) -> tuple[set[str], set[str]]:
    """(names Orthanc gives to public tags, names it gives to private ones)."""
    instance = orthanc.get_json(f"/instances/{instance_id}")
    series = orthanc.get_json(f"/series/{instance['ParentSeries']}")
    study = orthanc.get_json(f"/studies/{series['ParentStudy']}")
    indexed = {
        *instance["MainDicomTags"],
        *series["MainDicomTags"],
        *study["MainDicomTags"],
        *study["PatientMainDicomTags"],
    }
    tags: dict[str, Any] = orthanc.get_json(f"/instances/{instance_id}/tags")
    private = {entry["Name"] for tag, entry in tags.items() if int(tag[:4], 16) % 2}
    public = {entry["Name"] for tag, entry in tags.items() if not int(tag[:4], 16) % 2}
    return indexed | public, private


def test_every_name_orthanc_gives_a_public_tag_is_accepted_and_private_ones_need_listing(
    orthanc,
):
    # Given an instance with indexed, retired, repeating-group and private tags in Orthanc
    instance_id = orthanc.upload(instance_with_every_kind_of_tag())
    public, private = reported_names(orthanc, instance_id)
    # Then each name Orthanc gives a public tag passes the start-up check, as it is spelt
    assert {"OtherPatientIDs", "RETIRED_RecognitionCode", "OverlayRows"} <= public
    assert [name for name in sorted(public) if not is_known_tag_name(name)] == []
    # And a private tag's name is not a DICOM keyword: it must be listed in tag_names
    assert "CSAImageHeaderType" in private
    assert not is_known_tag_name("CSAImageHeaderType")


async def test_routes_on_names_the_check_accepts_match_what_orthanc_reports(orthanc):
    # Given routes on a retired tag as Orthanc spells it, and on a listed private tag
    instance_id = orthanc.upload(instance_with_every_kind_of_tag())
    config = parse_config(
        {
            "orthanc": {"tag_names": ["CSAImageHeaderType"]},
            "destinations": [{"name": n, "host": "h"} for n in ("retired", "private", "none")],
            "routes": [
                {"destinations": ["retired"], "match": {"RETIRED_RecognitionCode": "RC-1"}},
                {"destinations": ["private"], "match": {"CSAImageHeaderType": "IMAGE NUM*"}},
                {"destinations": ["none"], "match": {"OverlayRows": "5"}},
            ],
        },
        environ={},
    )
    source = OrthancClient(
        OrthancConfig(url=orthanc.url, username=orthanc.username, password=orthanc.password)
    )
    try:
        # When ingest resolves the instance's tags as it does for routing
        resolver = Resolver(source)
        info = await resolver.with_all_tags(await resolver.instance(instance_id))
    finally:
        await source.close()
    # Then both routes match, and the one whose value differs does not
    assert Router(config.routes).destinations("instance", info.tags) == ["retired", "private"]
