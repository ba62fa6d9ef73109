"""Orthanc resources -> instances with the tags that jobs and routing rules need."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from sendqueue.shared.errors import InstanceNotFound, PermanentError, SourceUnavailable
from sendqueue.shared.orthanc import OrthancClient

log = logging.getLogger(__name__)

_CACHE_SIZE = 2048
_LEVELS = ("instances", "series", "studies", "patients")


#: Instances per `POST /tools/bulk-content` (a page of changes is 100 by default).
_BULK_CHUNK = 500
#: Series (and their studies) read at once for the instances of one bulk answer.
_BULK_PARENTS = 16


@dataclass(frozen=True)
class InstanceInfo:
    orthanc_id: str
    tags: dict[str, str] = field(default_factory=dict)

    def tag(self, keyword: str) -> str:
        return self.tags.get(keyword, "")


def _strings(tags: Any) -> dict[str, str]:
    return {k: v for k, v in (tags or {}).items() if isinstance(v, str)}


@dataclass(frozen=True)
class BulkInstance:
    """An instance as one bulk read found it: its tags (as `instance()`) and metadata."""

    info: InstanceInfo
    #: None when the answer had no metadata (read it apart, then).
    metadata: dict[str, str] | None


class Resolver:
    def __init__(self, orthanc: OrthancClient) -> None:
        self._orthanc = orthanc
        self._parents: OrderedDict[str, dict[str, str]] = OrderedDict()
        #: Series whose tags are being read, for the instances that ask meanwhile.
        self._loading: dict[str, asyncio.Future[dict[str, str]]] = {}
        #: False once this Orthanc turned out to lack (or refuse) POST /tools/bulk-content.
        self._bulk = True

    async def instances_in_bulk(self, orthanc_ids: list[str]) -> dict[str, BulkInstance] | None:
        """Many instances at once: one `POST /tools/bulk-content` per 500 (Orthanc 1.9.4
        and newer) instead of a GET each, their metadata included. Only a shortcut: an ID
        missing from the answer (bulk-content skips what is gone; an entry it could not
        have made sense of is left out too) is for the caller to read one by one, as it
        does every ID when this returns None (an Orthanc without the route, or refusing
        it)."""
        if not self._bulk or not orthanc_ids:
            return None
        found: dict[str, BulkInstance] = {}
        gate = asyncio.Semaphore(_BULK_PARENTS)

        async def entry_of(raw: Any) -> BulkInstance | None:
            async with gate:  # a page may span many series, each read once
                return await self._bulk_entry(raw)

        for start in range(0, len(orthanc_ids), _BULK_CHUNK):
            chunk = orthanc_ids[start : start + _BULK_CHUNK]
            try:
                answer = await self._orthanc.post_json(
                    "/tools/bulk-content", {"Resources": chunk, "Level": "Instance"}
                )
            except (InstanceNotFound, PermanentError) as exc:
                self._no_bulk(f"{exc}")
                return None
            except SourceUnavailable as exc:
                if exc.reason_class != "source-auth":
                    raise  # Orthanc down or failing: the caller's round fails, as a GET's
                self._no_bulk(f"{exc}")  # an authorization plugin may allow GETs only
                return None
            if not isinstance(answer, list):
                self._no_bulk(f"its answer is a {type(answer).__name__}, not a list")
                return None
            tasks = [asyncio.create_task(entry_of(raw)) for raw in answer]
            try:
                for instance in await asyncio.gather(*tasks):
                    if instance is not None:
                        found[instance.info.orthanc_id] = instance
            finally:  # a failed read fails the caller's round: no read outlives it
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        return found

    def _no_bulk(self, why: str) -> None:
        self._bulk = False
        log.info(
            "Orthanc does not answer POST /tools/bulk-content (%s; it needs 1.9.4 or newer):"
            " reading new instances one GET each",
            why,
        )

    async def _bulk_entry(self, entry: Any) -> BulkInstance | None:
        if not isinstance(entry, dict) or entry.get("Type") != "Instance":
            return None
        if not isinstance(entry.get("ID"), str) or "ParentSeries" not in entry:
            return None
        parent = await self._series_tags(str(entry["ParentSeries"]))
        info = InstanceInfo(entry["ID"], {**parent, **_strings(entry.get("MainDicomTags"))})
        metadata = entry.get("Metadata")
        return BulkInstance(info, _strings(metadata) if isinstance(metadata, dict) else None)

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
