"""The expiry of every certificate file in the destinations' `tls` tables, as metrics."""

from __future__ import annotations

from collections.abc import Iterable

from sendqueue.shared.cert_expiry import CertificateExpiry
from sendqueue.shared.config import DestinationConfig


def watch_destination_certificates(
    expiry: CertificateExpiry, destinations: Iterable[DestinationConfig]
) -> None:
    """cert="destination/<name>/client" for tls.cert_file (with any chain in it) and
    "destination/<name>/ca" for each CA of tls.ca_file; the system's CAs are not ours."""
    for destination in destinations:
        tls = destination.tls
        if tls is None:
            continue
        if tls.cert_file:
            expiry.watch(tls.cert_file, cert=f"destination/{destination.name}/client")
        if tls.ca_file:
            expiry.watch(tls.ca_file, cert=f"destination/{destination.name}/ca")
