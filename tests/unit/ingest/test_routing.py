"""Routing rules: levels, globs, several destinations."""

from sendqueue.services.ingest.routing import Router, matches
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
