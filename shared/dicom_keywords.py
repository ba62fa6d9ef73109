"""The tag names a route may match on, checked at start-up against the DICOM dictionary.

A route matches on the tags Orthanc reports for a resource: its MainDicomTags (patient,
study, series, instance) and, for any other tag, the instance's /simplified-tags. Orthanc
(Debian's 1.10 and its DCMTK dictionary, checked by tests/integration/test_route_keywords.py)
names them so:

- every tag it indexes (MainDicomTags) by its DICOM keyword, retired ones included
  (`OtherPatientIDs`);
- other tags in /simplified-tags by their keyword, repeating groups by their keyword
  (`OverlayRows` for 6000-60FF), retired ones by "RETIRED_" + keyword
  (`RETIRED_RecognitionCode`);
- private tags by the name in its private dictionary, or in its own `Dictionary` option.

The first two are accepted here; the names of private tags are a site's own and are
listed in `[orthanc] tag_names`. A misspelt keyword would otherwise never match anything,
silently: it is a ConfigError that suggests the keywords it is close to.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable

#: The prefix Orthanc (DCMTK's dictionary) gives to the names of retired tags.
RETIRED_PREFIX = "RETIRED_"


def is_known_tag_name(name: str) -> bool:
    """A DICOM keyword (retired and repeating-group ones included), or Orthanc's spelling
    of a retired one."""
    return _is_keyword(name) or (
        name.startswith(RETIRED_PREFIX) and _is_keyword(name.removeprefix(RETIRED_PREFIX))
    )


def unknown_tag_names(names: Iterable[str], also: Iterable[str] = ()) -> list[str]:
    """The names that are neither DICOM keywords nor in `also`, in their order."""
    accepted = set(also)
    return [name for name in names if name not in accepted and not is_known_tag_name(name)]


def close_keywords(name: str, limit: int = 3) -> list[str]:
    """DICOM keywords close to a misspelt one: a different case first, then look-alikes."""
    keywords = _keywords()
    same_case = [k for k in keywords if k.lower() == name.lower()]
    return same_case or difflib.get_close_matches(name, keywords, n=limit, cutoff=0.8)


def _is_keyword(name: str) -> bool:
    from pydicom import datadict  # loaded only when a route matches on tags

    if not name:
        return False  # pydicom's dictionary has entries with an empty keyword
    return datadict.tag_for_keyword(name) is not None or datadict.repeater_has_keyword(name)


@functools.cache
def _keywords() -> list[str]:
    from pydicom import datadict

    return sorted(keyword for keyword in datadict.keyword_dict if keyword)
