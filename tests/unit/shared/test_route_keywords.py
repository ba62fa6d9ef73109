"""[[routes]] match keys are checked against the DICOM dictionary when the config loads."""

from __future__ import annotations

from typing import Any

import pytest

from sendqueue.services.cli.main import main
from sendqueue.shared.config import parse_config
from sendqueue.shared.dicom_keywords import close_keywords, is_known_tag_name
from sendqueue.shared.errors import ConfigError

PACS = {"name": "pacs", "host": "h"}


def with_routes(*matches: dict[str, Any], tag_names: list[str] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "destinations": [PACS],
        "routes": [{"destinations": ["pacs"], "match": match} for match in matches],
    }
    if tag_names is not None:
        data["orthanc"] = {"tag_names": tag_names}
    return data


@pytest.mark.parametrize(
    "name",
    [
        "Modality",
        "StudyDescription",
        "SliceThickness",
        "OtherPatientIDs",  # retired, and indexed by Orthanc under this name
        "RETIRED_RecognitionCode",  # retired, as Orthanc's /simplified-tags spells it
        "OverlayRows",  # a repeating group (6000-60FF,0010)
    ],
)
def test_dicom_keywords_and_orthancs_spellings_are_accepted(name):
    config = parse_config(with_routes({name: "*"}), environ={})
    assert list(config.routes[0].match) == [name]


def test_a_misspelt_keyword_stops_the_load_naming_it_and_what_it_is_close_to():
    with pytest.raises(ConfigError) as error:
        parse_config(with_routes({"Modality": "CT"}, {"Modalty": "CT"}), environ={})
    message = str(error.value)
    assert "routes[1].match: 'Modalty' is not a DICOM keyword (did you mean Modality?)" in message
    assert "[orthanc] tag_names" in message


def test_a_keyword_in_another_case_is_suggested_in_the_right_one():
    # Tags are looked up as written: "modality" would never match a resource.
    with pytest.raises(
        ConfigError, match="'modality' is not a DICOM keyword \\(did you mean Modality\\?\\)"
    ):
        parse_config(with_routes({"modality": "CT"}), environ={})
    assert close_keywords("PATIENTID") == ["PatientID"]


def test_a_name_far_from_every_keyword_gets_no_suggestion():
    with pytest.raises(ConfigError) as error:
        parse_config(with_routes({"Xyzzy": "1"}), environ={})
    assert "'Xyzzy' is not a DICOM keyword;" in str(error.value)
    assert "did you mean" not in str(error.value)


def test_the_retired_prefix_needs_a_keyword_after_it():
    assert is_known_tag_name("RETIRED_RecognitionCode")
    assert not is_known_tag_name("RETIRED_Modalty")
    assert not is_known_tag_name("RETIRED_")
    assert not is_known_tag_name("")


def test_a_private_tag_name_is_accepted_once_listed_in_orthanc_tag_names():
    private = {"Modality": "MR", "CSAImageHeaderType": "IMAGE NUM 4"}
    with pytest.raises(ConfigError, match="'CSAImageHeaderType' is not a DICOM keyword"):
        parse_config(with_routes(private), environ={})
    config = parse_config(with_routes(private, tag_names=["CSAImageHeaderType"]), environ={})
    assert config.routes[0].match == private
    assert config.orthanc.tag_names == ["CSAImageHeaderType"]


def test_a_service_does_not_start_with_an_unknown_keyword(tmp_path, capsys):
    # Given a config file whose route matches on a misspelt keyword
    path = tmp_path / "sendqueue.toml"
    path.write_text(
        '[[destinations]]\nname = "pacs"\nhost = "127.0.0.1"\n\n'
        '[[routes]]\ndestinations = ["pacs"]\nmatch = { StudyDescripton = "*CHEST*" }\n'
    )
    # When the ingest service starts, Then it stops before connecting to anything
    assert main(["ingest", "--config", str(path)]) == 2
    assert "'StudyDescripton' is not a DICOM keyword" in capsys.readouterr().err


def test_origin_conditions_and_lists_of_globs_load():
    data = with_routes({"Modality": "!SR|PR", "StudyDescription": ["*CHEST*", "!*PEDS*"]})
    data["routes"][0].update(from_aet="CT1|CT2", called_aet_in="GATEWAY", origin="!RestApi")
    route = parse_config(data, environ={}).routes[0]
    assert (route.from_aet, route.called_aet_in, route.origin) == ("CT1|CT2", "GATEWAY", "!RestApi")
    assert route.match["StudyDescription"] == ["*CHEST*", "!*PEDS*"]


def test_an_origin_orthanc_does_not_know_stops_the_load():
    data = with_routes()
    data["routes"] = [{"destinations": ["pacs"], "origin": "Dicom"}]
    with pytest.raises(ConfigError, match="origin 'Dicom' is none of Orthanc's origins"):
        parse_config(data, environ={})


def test_an_empty_list_of_globs_stops_the_load():
    with pytest.raises(ConfigError, match="a list of globs must not be empty"):
        parse_config(with_routes({"Modality": []}), environ={})


def test_delete_after_delivery_needs_routes_of_one_level():
    # A route of another level would see the instance later, maybe after it is deleted.
    data = with_routes()
    data["routes"] = [
        {"destinations": ["pacs"], "delete_after_delivery": True},
        {"destinations": ["pacs"], "level": "study"},
    ]
    with pytest.raises(ConfigError, match="every route at the same level, got instance, study"):
        parse_config(data, environ={})
