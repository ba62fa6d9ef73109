"""Routing rules: levels, globs, several destinations."""

from sendqueue.services.ingest.routing import Origin, Router, matches
from sendqueue.shared.config import RouteConfig


def test_globs_match_case_insensitively_and_missing_tags_are_empty():
    tags = {"Modality": "CT", "StudyDescription": "Chest CT"}
    assert matches({"Modality": "ct"}, tags)
    assert matches({"StudyDescription": "*chest*"}, tags)
    assert not matches({"Modality": "MR"}, tags)
    assert matches({"BodyPartExamined": "*"}, tags)
    assert not matches({"BodyPartExamined": "?*"}, tags)


def test_alternatives_are_separated_by_a_bar():
    assert matches({"Modality": "MR|CT"}, {"Modality": "CT"})
    assert not matches({"Modality": "MR|US"}, {"Modality": "CT"})


def test_destinations_of_every_matching_route_once_in_order():
    router = Router(
        [
            RouteConfig(destinations=["a", "b"], match={"Modality": "CT"}),
            RouteConfig(destinations=["b", "c"]),
            RouteConfig(destinations=["d"], level="study"),
        ]
    )
    assert router.destinations("instance", {"Modality": "CT"}) == ["a", "b", "c"]
    assert router.destinations("instance", {"Modality": "MR"}) == ["b", "c"]
    assert router.destinations("study", {}) == ["d"]
    assert router.levels() == {"instance", "study"}
    assert router.tags_needed("instance") == {"Modality"}


def test_possible_destinations_ignore_the_tags_that_could_not_be_read():
    router = Router(
        [
            RouteConfig(destinations=["thin"], match={"Modality": "CT", "SliceThickness": "0.*"}),
            RouteConfig(destinations=["mr"], match={"Modality": "MR", "SliceThickness": "*"}),
            RouteConfig(destinations=["all"]),
        ]
    )
    # SliceThickness unknown: judged on Modality alone
    assert router.possible_destinations("instance", {"Modality": "CT"}) == ["thin", "all"]
    # nothing known: every route might match
    assert router.possible_destinations("instance", {}) == ["thin", "mr", "all"]


def test_a_leading_bang_negates_and_a_list_must_all_hold():
    assert matches({"Modality": "!SR|PR"}, {"Modality": "CT"})
    assert not matches({"Modality": "!SR|PR"}, {"Modality": "pr"})
    # a missing tag is "": "!" alone means "present"
    assert matches({"Modality": "!"}, {"Modality": "CT"})
    assert not matches({"BodyPartExamined": "!"}, {"Modality": "CT"})
    rules = {"StudyDescription": ["*CHEST*", "!*PEDS*"]}
    assert matches(rules, {"StudyDescription": "CT Chest"})
    assert not matches(rules, {"StudyDescription": "Peds chest"})
    assert not matches(rules, {"StudyDescription": "Head"})


def test_routes_on_the_sender_the_called_aet_and_the_origin():
    router = Router(
        [
            RouteConfig(destinations=["ct"], from_aet="CT1|CT2"),
            RouteConfig(destinations=["not-mr"], from_aet="!MR*"),
            RouteConfig(destinations=["gw"], called_aet_in="GATEWAY"),
            RouteConfig(destinations=["rest"], origin="RestApi"),
            RouteConfig(destinations=["all"]),
        ]
    )
    assert router.needs_origin("instance") and not Router(
        [RouteConfig(destinations=["a"])]
    ).needs_origin("instance")
    ct = Origin(remote_aet="ct2", called_aet="GATEWAY", origin="DicomProtocol")
    mr = Origin(remote_aet="MR_3T", called_aet="ORTHANC", origin="DicomProtocol")
    rest = Origin.from_metadata({"Origin": "RestApi", "ReceptionDate": "20260101T000000"})
    assert router.destinations("instance", {}, ct) == ["ct", "not-mr", "gw", "all"]
    assert router.destinations("instance", {}, mr) == ["all"]
    # a REST upload has no sender AE title: it is "", which "!MR*" matches and "CT1" not
    assert router.destinations("instance", {}, rest) == ["not-mr", "rest", "all"]


def test_possible_destinations_still_apply_the_origin():
    router = Router(
        [
            RouteConfig(destinations=["ct"], from_aet="CT1", match={"SliceThickness": "1"}),
            RouteConfig(destinations=["other"], from_aet="!CT1"),
        ]
    )
    assert router.possible_destinations("instance", {}, Origin(remote_aet="CT1")) == ["ct"]


def test_a_route_that_deletes_after_delivery_makes_the_whole_choice_a_deletion_group():
    router = Router(
        [
            RouteConfig(
                destinations=["pacs"], match={"Modality": "CT"}, delete_after_delivery=True
            ),
            RouteConfig(destinations=["backup"]),
        ]
    )
    assert router.deletes_after("instance", {"Modality": "CT"})
    assert not router.deletes_after("instance", {"Modality": "MR"})
    assert router.destinations("instance", {"Modality": "CT"}) == ["pacs", "backup"]
