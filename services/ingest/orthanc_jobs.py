"""Orthanc's store jobs, read from `GET /jobs?expand`, and the destinations they stand for.

Pure: no I/O. Orthanc 1.10 names a modality job's target by its AE title (`RemoteAet`)
and a peer job's by its URL (`Peer`: [url, username, ...]), never by the modality's or
peer's id, so the id a destination names is matched through `GET /modalities?expand` and
`GET /peers?expand`.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sendqueue.shared.config import Config

#: Orthanc job types that send instances, and what names their target.
MODALITY_STORE = "DicomModalityStore"
PEER_STORE = "OrthancPeerStore"
STORE_TYPES = frozenset({MODALITY_STORE, PEER_STORE})
#: The DICOMweb plugin's STOW-RS client job: its content names no server, no resources.
STOW_CLIENT = "DicomWebStowClient"
#: States after which Orthanc does not touch a job again (unless resubmitted).
FINISHED = frozenset({"Success", "Failure"})
#: Orthanc's ErrorCode for a job cancelled on purpose (POST /jobs/{id}/cancel).
CANCELED_JOB = 37


@dataclass(frozen=True)
class StoreJob:
    id: str
    type: str
    state: str
    #: The AE title (modality jobs) or the URL (peer jobs) Orthanc was sending to.
    target: str
    resources: tuple[str, ...]
    error_code: int
    error: str
    failed_at: float | None
    instances: int
    description: str

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def failed(self) -> bool:
        """Failed by itself: a job an operator cancelled is their decision, not a failure."""
        return self.state == "Failure" and self.error_code != CANCELED_JOB


def store_job(raw: Mapping[str, Any]) -> StoreJob | None:
    """A store job from one entry of `GET /jobs?expand`; None for any other kind of job."""
    kind = str(raw.get("Type", ""))
    if kind not in STORE_TYPES or not raw.get("ID"):
        return None
    content = raw.get("Content") or {}
    if kind == MODALITY_STORE:
        target = str(content.get("RemoteAet", ""))
    else:
        peer = content.get("Peer") or [""]
        target = str(peer[0] if isinstance(peer, list) and peer else peer)
    resources = content.get("ParentResources") or []
    return StoreJob(
        id=str(raw["ID"]),
        type=kind,
        state=str(raw.get("State", "")),
        target=target,
        resources=tuple(str(r) for r in resources if isinstance(r, str)),
        error_code=_int(raw.get("ErrorCode")),
        error=_error_text(raw),
        failed_at=orthanc_time(raw.get("CompletionTime")),
        instances=_int(content.get("InstancesCount")),
        description=str(content.get("Description", "")),
    )


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def _error_text(raw: Mapping[str, Any]) -> str:
    description = str(raw.get("ErrorDescription") or "").strip()
    details = str(raw.get("ErrorDetails") or "").strip()
    return ": ".join(part for part in (description, details) if part)


def orthanc_time(value: Any) -> float | None:
    """Orthanc's job times ("20261206T125744.997063", UTC) as epoch seconds."""
    if not isinstance(value, str) or not value:
        return None
    whole, _, fraction = value.partition(".")
    try:
        parsed = time.strptime(whole, "%Y%m%dT%H%M%S")
    except ValueError:
        return None
    return calendar.timegm(parsed) + (float("0." + fraction) if fraction.isdigit() else 0.0)


def _same_url(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


class JobTargets:
    """Which destination a store job's target stands for, from the config's
    `orthanc_modality` / `orthanc_peer` and Orthanc's own modality and peer lists."""

    def __init__(
        self,
        config: Config,
        modalities: Mapping[str, Mapping[str, Any]],
        peers: Mapping[str, Mapping[str, Any]],
    ) -> None:
        self._by_aet: dict[str, list[str]] = {}
        self._by_url: list[tuple[str, str]] = []
        #: Destinations whose modality or peer Orthanc does not know (a typo, or removed).
        self.unknown: list[str] = []
        for dest in config.destinations:
            modality = getattr(dest, "orthanc_modality", "")
            peer = getattr(dest, "orthanc_peer", "")
            if modality:
                self._map_modality(dest.name, modality, modalities)
            if peer:
                self._map_peer(dest.name, peer, peers)

    def _map_modality(
        self, destination: str, modality: str, modalities: Mapping[str, Mapping[str, Any]]
    ) -> None:
        found = _lookup(modalities, modality)
        if found is None or not found.get("AET"):
            self.unknown.append(destination)
            return
        self._by_aet.setdefault(str(found["AET"]), []).append(destination)

    def _map_peer(
        self, destination: str, peer: str, peers: Mapping[str, Mapping[str, Any]]
    ) -> None:
        found = _lookup(peers, peer)
        if found is None or not found.get("Url"):
            self.unknown.append(destination)
            return
        self._by_url.append((str(found["Url"]), destination))

    def destinations(self, job: StoreJob) -> list[str]:
        """The destinations the job's target stands for: [] when none is mapped; more than
        one when several modalities share an AE title (each gets the instances: a
        duplicate is harmless, a loss is not)."""
        if job.type == MODALITY_STORE:
            return list(self._by_aet.get(job.target, []))
        return [dest for url, dest in self._by_url if _same_url(url, job.target)]


def _lookup(known: Mapping[str, Mapping[str, Any]], name: str) -> Mapping[str, Any] | None:
    """Exactly as Orthanc's REST routes do (`/modalities/Foo` is not `/modalities/foo`)."""
    return known.get(name)


def to_capture(job: StoreJob, taken_over: frozenset[str]) -> bool:
    """Failed by itself, or cancelled by ingest to send it itself."""
    return job.failed or (job.state == "Failure" and job.id in taken_over)


def new_failures(
    jobs: Sequence[StoreJob],
    handled: frozenset[str],
    failed_before: set[str],
    taken_over: frozenset[str] = frozenset(),
) -> list[StoreJob]:
    """Failed jobs not yet handled that were already failed at the previous poll: a job
    Orthanc (a Lua hook, a script) resubmits at once is then seen running, not failed."""
    return [
        job
        for job in jobs
        if to_capture(job, taken_over) and job.id not in handled and job.id in failed_before
    ]
