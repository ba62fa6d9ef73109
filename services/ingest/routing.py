"""Routing rules: which destinations a resource goes to. Pure logic, no I/O.

A route holds when every condition holds: each `match` rule on a tag, and `from_aet`,
`called_aet_in` and `origin` on how the instance reached Orthanc (its metadata). Every
condition is a case-insensitive shell glob, `A|B` for alternatives, and `!` in front
negates it; a value the instance lacks counts as "".
"""

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
class Origin:
    """How an instance reached Orthanc, from its metadata ("" where Orthanc has none)."""

    #: RemoteAET: the AE title of the modality that C-STOREd it ("" for a REST upload).
    remote_aet: str = ""
    #: CalledAET: the AE title Orthanc was called with.
    called_aet: str = ""
    #: Origin: "DicomProtocol", "RestApi", "Plugins", "Lua", "WebDav" or "Unknown".
    origin: str = ""

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, object]) -> Origin:
        def text(name: str) -> str:
            value = metadata.get(name, "")
            return value if isinstance(value, str) else ""

        return cls(text("RemoteAET"), text("CalledAET"), text("Origin"))


#: Nothing known about the origin: conditions on it see "".
UNKNOWN_ORIGIN = Origin()


@dataclass(frozen=True)
class Router:
    routes: Sequence[RouteConfig]

    def levels(self) -> set[str]:
        return {route.level for route in self.routes}

    def routes_for(self, level: str) -> list[RouteConfig]:
        return [route for route in self.routes if route.level == level]

    def tags_needed(self, level: str) -> set[str]:
        return {key for route in self.routes_for(level) for key in route.match}

    def needs_origin(self, level: str) -> bool:
        """Whether a route of this level looks at how instances reached Orthanc."""
        return any(_origin_patterns(route) for route in self.routes_for(level))

    def destinations(
        self, level: str, tags: Mapping[str, str], origin: Origin = UNKNOWN_ORIGIN
    ) -> list[str]:
        """Every destination of every matching route at this level, once, in order."""
        found: dict[str, None] = {}
        for route in self.routes_for(level):
            if matches(route.match, tags) and origin_matches(route, origin):
                found.update(dict.fromkeys(route.destinations))
        return list(found)

    def deletes_after(
        self, level: str, tags: Mapping[str, str], origin: Origin = UNKNOWN_ORIGIN
    ) -> bool:
        """Whether a matching route asks to delete the instance once delivered."""
        return any(
            route.delete_after_delivery
            and matches(route.match, tags)
            and origin_matches(route, origin)
            for route in self.routes_for(level)
        )

    def possible_destinations(
        self, level: str, known: Mapping[str, str], origin: Origin = UNKNOWN_ORIGIN
    ) -> list[str]:
        """Destinations of the routes that match on every tag known, ignoring the others:
        where a resource might go when the rest of its tags cannot be read."""
        found: dict[str, None] = {}
        for route in self.routes_for(level):
            knowable = {k: pattern for k, pattern in route.match.items() if k in known}
            if matches(knowable, known) and origin_matches(route, origin):
                found.update(dict.fromkeys(route.destinations))
        return list(found)


def matches(patterns: Mapping[str, str | Sequence[str]], tags: Mapping[str, str]) -> bool:
    """All patterns must match: shell globs, case-insensitive, "A|B" for alternatives,
    "!" in front for "does not match"; a list of patterns for one tag must all match;
    a tag the resource lacks counts as ""."""
    return all(
        matches_pattern(pattern, str(tags.get(keyword, "")))
        for keyword, rules in patterns.items()
        for pattern in ([rules] if isinstance(rules, str) else rules)
    )


def origin_matches(route: RouteConfig, origin: Origin) -> bool:
    values = {"from_aet": origin.remote_aet, "called_aet_in": origin.called_aet}
    values["origin"] = origin.origin
    return all(matches_pattern(p, values[key]) for key, p in _origin_patterns(route).items())


def _origin_patterns(route: RouteConfig) -> dict[str, str]:
    """The origin conditions a route sets ("" = not set)."""
    patterns = {
        "from_aet": route.from_aet,
        "called_aet_in": route.called_aet_in,
        "origin": route.origin,
    }
    return {key: pattern for key, pattern in patterns.items() if pattern}


def matches_pattern(pattern: str, value: str) -> bool:
    """One condition: a glob with "A|B" alternatives, negated by a leading "!"."""
    if pattern.startswith("!"):
        return not matches_pattern(pattern[1:], value)
    value = value.upper()
    return any(fnmatch.fnmatchcase(value, choice) for choice in pattern.upper().split("|"))
