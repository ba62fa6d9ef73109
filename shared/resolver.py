"""Orthanc resources -> instances with the tags that jobs and routing rules need."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from sendqueue.shared.errors import InstanceNotFound
from sendqueue.shared.orthanc import OrthancClient

_CACHE_SIZE = 2048
_LEVELS = ("instances", "series", "studies", "patients")


@dataclass(frozen=True)
class InstanceInfo:
    orthanc_id: str
    tags: dict[str, str] = field(default_factory=dict)

    def tag(self, keyword: str) -> str:
        return self.tags.get(keyword, "")


def _strings(tags: Any) -> dict[str, str]:
    return {k: v for k, v in (tags or {}).items() if isinstance(v, str)}


class Resolver:
    def __init__(self, orthanc: OrthancClient) -> None:
        self._orthanc = orthanc
        self._parents: OrderedDict[str, dict[str, str]] = OrderedDict()
        #: Series whose tags are being read, for the instances that ask meanwhile.
        self._loading: dict[str, asyncio.Future[dict[str, str]]] = {}

    async def instance(self, orthanc_id: str) -> InstanceInfo:
        """Main tags of the instance and its series, study and patient (2-3 cached GETs)."""
        data = await self._orthanc.get_json(f"/instances/{quote(orthanc_id, safe='')}")
        parent = await self._series_tags(str(data["ParentSeries"]))
        return InstanceInfo(orthanc_id, {**parent, **_strings(data.get("MainDicomTags"))})

    async def instances_of(self, level: str, orthanc_id: str) -> list[InstanceInfo]:
        """Every instance of a series or study, with main tags."""
        plural = {"series": "series", "study": "studies", "patient": "patients"}[level]
        listed = await self._orthanc.get_json(f"/{plural}/{quote(orthanc_id, safe='')}/instances")
        infos = []
        for entry in listed:
            parent = await self._series_tags(str(entry["ParentSeries"]))
            infos.append(
                InstanceInfo(str(entry["ID"]), {**parent, **_strings(entry.get("MainDicomTags"))})
            )
        return infos

    async def with_all_tags(self, info: InstanceInfo) -> InstanceInfo:
        """Adds every tag of the file, for routing rules on tags Orthanc does not index."""
        tags = await self._orthanc.get_json(
            f"/instances/{quote(info.orthanc_id, safe='')}/simplified-tags"
        )
        return InstanceInfo(info.orthanc_id, {**_strings(tags), **info.tags})

    async def metadata(self, orthanc_id: str) -> dict[str, str]:
        """The instance's metadata (RemoteAET, CalledAET, Origin, ...): one GET."""
        found = await self._orthanc.get_json(
            f"/instances/{quote(orthanc_id, safe='')}/metadata", {"expand": ""}
        )
        return _strings(found)

    async def content_identity(self, orthanc_id: str) -> str | None:
        """What identifies the stored file's content: its MD5 (or, where Orthanc keeps
        none, its attachment's UUID, new on every overwrite); None if it is gone."""
        try:
            info = await self._orthanc.get_json(
                f"/instances/{quote(orthanc_id, safe='')}/attachments/dicom/info"
            )
        except InstanceNotFound:
            return None
        return str(info.get("UncompressedMD5") or info.get("Uuid") or "")

    async def expand(self, orthanc_id: str) -> list[InstanceInfo]:
        """An instance, series, study or patient ID -> its instances."""
        for plural in _LEVELS:
            # Orthanc answers /series/{id}/instances with [] for an ID of another level,
            # so the level is told by the resource itself answering.
            if not await self._orthanc.exists(f"/{plural}/{quote(orthanc_id, safe='')}"):
                continue
            if plural == "instances":
                return [await self.instance(orthanc_id)]
            level = {"series": "series", "studies": "study", "patients": "patient"}[plural]
            return await self.instances_of(level, orthanc_id)
        raise InstanceNotFound(f"no Orthanc instance, series, study or patient {orthanc_id!r}")

    async def _series_tags(self, series_id: str) -> dict[str, str]:
        cached = self._parents.get(series_id)
        if cached is not None:
            self._parents.move_to_end(series_id)
            return cached
        # Instances of one series are resolved at once (ingest reads a page's changes
        # concurrently): they share one read of the series and study, not one each.
        loading = self._loading.get(series_id)
        if loading is None:
            loading = asyncio.ensure_future(self._load_series_tags(series_id))
            self._loading[series_id] = loading
            loading.add_done_callback(lambda _: self._loading.pop(series_id, None))
            # Retrieved here, as every waiter may be gone (cancelled) by the time it fails.
            loading.add_done_callback(lambda done: done.cancelled() or done.exception())
        return await asyncio.shield(loading)

    async def _load_series_tags(self, series_id: str) -> dict[str, str]:
        series = await self._orthanc.get_json(f"/series/{series_id}")
        study = await self._orthanc.get_json(f"/studies/{series['ParentStudy']}")
        tags = {
            **_strings(study.get("PatientMainDicomTags")),
            **_strings(study.get("MainDicomTags")),
            **_strings(series.get("MainDicomTags")),
        }
        self._parents[series_id] = tags
        while len(self._parents) > _CACHE_SIZE:
            self._parents.popitem(last=False)
        return tags
