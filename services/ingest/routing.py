"""Routing rules: which destinations a resource goes to. Pure logic, no I/O."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sendqueue.shared.config import Level, RouteConfig

#: The Orthanc change that makes a resource of each level ready to send.
CHANGE_FOR_LEVEL: dict[str, Level] = {
    "NewInstance": "instance",
    "StableSeries": "series",
    "StableStudy": "study",
}


@dataclass(frozen=True)
class Router:
    routes: Sequence[RouteConfig]

    def levels(self) -> set[str]:
        return {route.level for route in self.routes}

    def routes_for(self, level: str) -> list[RouteConfig]:
        return [route for route in self.routes if route.level == level]

    def tags_needed(self, level: str) -> set[str]:
        return {key for route in self.routes_for(level) for key in route.match}

    def destinations(self, level: str, tags: Mapping[str, str]) -> list[str]:
        """Every destination of every matching route at this level, once, in order."""
        found: dict[str, None] = {}
        for route in self.routes_for(level):
            if matches(route.match, tags):
                found.update(dict.fromkeys(route.destinations))
        return list(found)

    def possible_destinations(self, level: str, known: Mapping[str, str]) -> list[str]:
        """Destinations of the routes that match on every tag known, ignoring the others:
        where a resource might go when the rest of its tags cannot be read."""
        found: dict[str, None] = {}
        for route in self.routes_for(level):
            knowable = {k: pattern for k, pattern in route.match.items() if k in known}
            if matches(knowable, known):
                found.update(dict.fromkeys(route.destinations))
        return list(found)


def matches(patterns: Mapping[str, str], tags: Mapping[str, str]) -> bool:
    """All patterns must match: shell globs, case-insensitive, "A|B" for alternatives;
    a tag the resource lacks counts as ""."""
    return all(
        _matches_one(pattern, str(tags.get(keyword, ""))) for keyword, pattern in patterns.items()
    )


def _matches_one(pattern: str, value: str) -> bool:
    value = value.upper()
    return any(fnmatch.fnmatchcase(value, choice) for choice in pattern.upper().split("|"))
