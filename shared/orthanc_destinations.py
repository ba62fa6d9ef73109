"""`[ingest] capture_failed_jobs = "all"`: a destination for every modality and peer Orthanc
knows (`GET /modalities?expand`, `GET /peers?expand`), added to the config at start-up.

Every service (and `sendqueue check`) builds the same list from the same Orthanc, so
ingest's jobs find a sender and a retry service that know their destination. A modality or
peer a configured destination already names (`orthanc_modality`, `orthanc_peer`) keeps it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from sendqueue.shared.config import (
    Config,
    DestinationConfig,
    DicomDestinationConfig,
    OrthancDestinationConfig,
    TlsConfig,
)
from sendqueue.shared.errors import ConfigError, SourceUnavailable
from sendqueue.shared.orthanc import OrthancClient

log = logging.getLogger(__name__)

_NOT_NAME = re.compile(r"[^A-Za-z0-9_.-]")
_WAIT_MAX = 30.0


def _name(kind: str, orthanc_id: str, taken: set[str]) -> str:
    """The destination's name: the id itself when it can be one and is free."""
    name = _NOT_NAME.sub("-", orthanc_id)[:64]
    if not name or not name[0].isalnum() or name in taken:
        name = f"orthanc-{kind}-{name}".strip("-")[:64]
    return name


def _mapped(config: Config, key: str) -> set[str]:
    return {str(getattr(d, key, "")) for d in config.destinations if getattr(d, key, "")}


def modality_destination(
    name: str, modality_id: str, modality: Mapping[str, Any], orthanc_aet: str
) -> DicomDestinationConfig:
    return DicomDestinationConfig(
        name=name,
        host=str(modality["Host"]),
        port=int(modality["Port"]),
        called_aet=str(modality["AET"]),
        # The peer knows Orthanc's AE title (or the one Orthanc uses for it): send as that.
        calling_aet=str(modality.get("LocalAet") or orthanc_aet or "SENDQUEUE"),
        tls=TlsConfig() if modality.get("UseDicomTls") else None,
        orthanc_modality=modality_id,
    )


def peer_destination(name: str, peer_id: str, peer: Mapping[str, Any]) -> OrthancDestinationConfig:
    # Orthanc never shows a peer's password: it comes from SENDQUEUE_DEST_<NAME>_PASSWORD.
    return OrthancDestinationConfig(
        name=name,
        url=str(peer["Url"]),
        username=str(peer.get("Username") or ""),
        orthanc_peer=peer_id,
    )


def destinations_from_orthanc(
    config: Config,
    modalities: Mapping[str, Mapping[str, Any]],
    peers: Mapping[str, Mapping[str, Any]],
    orthanc_aet: str,
) -> list[DestinationConfig]:
    """The destinations to add (pure): one per modality or peer no destination names."""
    taken = {d.name for d in config.destinations}
    added: list[DestinationConfig] = []
    for kind, known, mapped in (
        ("modality", modalities, _mapped(config, "orthanc_modality")),
        ("peer", peers, _mapped(config, "orthanc_peer")),
    ):
        for orthanc_id, settings in sorted(known.items()):
            if orthanc_id in mapped:
                continue
            name = _name(kind, orthanc_id, taken)
            try:
                dest: DestinationConfig = (
                    modality_destination(name, orthanc_id, settings, orthanc_aet)
                    if kind == "modality"
                    else peer_destination(name, orthanc_id, settings)
                )
            except (KeyError, ValueError, TypeError) as exc:
                log.warning("Orthanc %s %r cannot be a destination: %s", kind, orthanc_id, exc)
                continue
            taken.add(name)
            added.append(dest)
    return added


async def with_orthanc_destinations(config: Config, *, wait: bool = True) -> Config:
    """The config plus Orthanc's modalities and peers, when capture_failed_jobs is "all".
    Waits for Orthanc (with a warning) when `wait`: the destinations are not known before."""
    if config.ingest.capture_failed_jobs != "all":
        return config
    orthanc = OrthancClient(config.orthanc)
    delay = 1.0
    try:
        while True:
            try:
                modalities = await orthanc.get_json("/modalities", {"expand": ""})
                peers = await orthanc.get_json("/peers", {"expand": ""})
                system = await orthanc.get_json("/system")
                break
            except SourceUnavailable as exc:
                if not wait:
                    raise
                log.warning(
                    'capture_failed_jobs = "all" needs Orthanc\'s modalities and peers: %s;'
                    " retrying in %.0fs",
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _WAIT_MAX)
    finally:
        await orthanc.close()
    added = destinations_from_orthanc(config, modalities, peers, str(system.get("DicomAet", "")))
    for dest in added:
        log.info("destination %s from Orthanc's %s", dest.name, _what(dest))
    try:
        added = [d.with_environment(os.environ) for d in added]
        return msgspec.structs.replace(config, destinations=[*config.destinations, *added])
    except ValueError as exc:
        raise ConfigError(f"invalid destinations from Orthanc: {exc}") from None


def _what(dest: DestinationConfig) -> str:
    if isinstance(dest, DicomDestinationConfig):
        return f"modality {dest.orthanc_modality!r} ({dest.called_aet}@{dest.host}:{dest.port})"
    if isinstance(dest, OrthancDestinationConfig):
        return f"peer {dest.orthanc_peer!r} ({dest.url})"
    return dest.kind
