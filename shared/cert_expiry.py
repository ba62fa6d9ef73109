"""When the certificates sendqueue uses expire: `sendqueue_tls_cert_expiry_timestamp_seconds`.

A service gives each PEM file it uses and what the file is for; every certificate in it
(one for a client or server certificate, several for a CA bundle) gets a sample with its
notAfter in seconds since the epoch::

    expiry = CertificateExpiry(registry, service="sender")
    expiry.watch("/etc/sendqueue/client.pem", cert="destination/pacs/client")

The files are read once, when the service starts, because that is when its TLS contexts
load them: a renewed file takes effect at the next restart, and so does its new date here.
A gauge read afresh at each scrape would show the new date while the old certificate is
still the one in use.

Only the standard library: the DER walk below reads the two fields needed (validity and
the subject's common name) and nothing else of the certificate.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Gauge

log = logging.getLogger(__name__)

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\s*(.+?)\s*-----END CERTIFICATE-----", re.DOTALL)
_SEQUENCE, _SET, _OID, _VERSION = 0x30, 0x31, 0x06, 0xA0
_UTC_TIME, _GENERALIZED_TIME = 0x17, 0x18
_COMMON_NAME = bytes([0x55, 0x04, 0x03])  # OID 2.5.4.3


class CertificateError(ValueError):
    """The bytes are not an X.509 certificate this module can read."""


@dataclass(frozen=True)
class CertificateDates:
    subject: str
    not_after: float


def read_pem_file(path: str) -> list[CertificateDates]:
    with open(path, "rb") as pem:
        return read_pem(pem.read())


def read_pem(data: bytes) -> list[CertificateDates]:
    """Every CERTIFICATE block of a PEM text, in file order (keys and others are skipped)."""
    found = []
    for block in _PEM.findall(data):
        try:
            der = base64.b64decode(block, validate=False)
        except binascii.Error as exc:
            raise CertificateError(f"bad base64 in a certificate block: {exc}") from None
        found.append(read_der(der))
    return found


def read_der(der: bytes) -> CertificateDates:
    """The subject's CN and notAfter of one DER certificate."""
    try:
        return _read_der(der)
    except (IndexError, ValueError) as exc:
        raise CertificateError(f"not a readable X.509 certificate: {exc}") from None


def _read_der(der: bytes) -> CertificateDates:
    # Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
    #   serialNumber, signature, issuer, validity, subject, ... }, ... }
    certificate = _children(der, *_expect(der, 0, _SEQUENCE))
    tbs = _children(der, *_expect_at(certificate, 0, _SEQUENCE))
    if tbs and tbs[0][0] == _VERSION:
        tbs = tbs[1:]
    validity = _children(der, *_expect_at(tbs, 3, _SEQUENCE))
    not_after = _time(validity[1][0], der[validity[1][1] : validity[1][2]])
    subject = _common_name(der, *_expect_at(tbs, 4, _SEQUENCE))
    return CertificateDates(subject=subject, not_after=not_after)


#: (tag, start of the value, end of the value)
_Element = tuple[int, int, int]


def _element(der: bytes, pos: int) -> tuple[_Element, int]:
    """The DER element at pos, and where the next one starts."""
    tag, length = der[pos], der[pos + 1]
    pos += 2
    if length & 0x80:
        size = length & 0x7F
        if not 0 < size <= 4:
            raise ValueError(f"unsupported length of {size} bytes")
        length = int.from_bytes(der[pos : pos + size], "big")
        pos += size
    end = pos + length
    if end > len(der):
        raise ValueError("element runs past the end of the data")
    return (tag, pos, end), end


def _children(der: bytes, start: int, end: int) -> list[_Element]:
    children, pos = [], start
    while pos < end:
        child, pos = _element(der, pos)
        children.append(child)
    return children


def _expect(der: bytes, pos: int, tag: int) -> tuple[int, int]:
    (found, start, end), _ = _element(der, pos)
    if found != tag:
        raise ValueError(f"expected tag {tag:#x} at {pos}, found {found:#x}")
    return start, end


def _expect_at(elements: list[_Element], index: int, tag: int) -> tuple[int, int]:
    found, start, end = elements[index]
    if found != tag:
        raise ValueError(f"expected tag {tag:#x}, found {found:#x}")
    return start, end


def _time(tag: int, value: bytes) -> float:
    """RFC 5280 4.1.2.5: UTCTime YYMMDDHHMMSSZ (YY < 50 is 20YY) or GeneralizedTime."""
    text = value.decode("ascii")
    if tag == _UTC_TIME:
        year = int(text[:2])
        text = f"{2000 + year if year < 50 else 1900 + year}{text[2:]}"
    elif tag != _GENERALIZED_TIME:
        raise ValueError(f"expected a time, found tag {tag:#x}")
    moment = datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC)
    return moment.timestamp()


def _common_name(der: bytes, start: int, end: int) -> str:
    """The subject's CN, or "" (Name ::= SEQUENCE OF SET OF SEQUENCE { type, value })."""
    for rdn_tag, rdn_start, rdn_end in _children(der, start, end):
        if rdn_tag != _SET:
            continue
        for _, attr_start, attr_end in _children(der, rdn_start, rdn_end):
            (oid_tag, oid_start, oid_end), (_, value_start, value_end) = _children(
                der, attr_start, attr_end
            )[:2]
            if oid_tag == _OID and der[oid_start:oid_end] == _COMMON_NAME:
                return der[value_start:value_end].decode("utf-8", errors="replace")
    return ""


class CertificateExpiry:
    """`sendqueue_tls_cert_expiry_timestamp_seconds{service, cert, subject}`."""

    def __init__(self, registry: CollectorRegistry, *, service: str) -> None:
        self._service = service
        self._gauge = Gauge(
            "sendqueue_tls_cert_expiry_timestamp_seconds",
            "When a certificate sendqueue uses expires (notAfter), in seconds since the epoch.",
            ["service", "cert", "subject"],
            registry=registry,
        )
        self._earliest: dict[tuple[str, str], float] = {}

    def watch(self, path: str, *, cert: str) -> None:
        """Export every certificate of the PEM file at path, labelled `cert`.

        A file that cannot be read is logged, never raised: the service's own TLS set-up
        reports unusable files, and a gauge must not stop a service that works.
        """
        try:
            found = read_pem_file(path)
        except (OSError, CertificateError) as exc:
            log.warning("certificate expiry of %s (%s) unknown: %s", cert, path, exc)
            return
        for dates in found:
            key = (cert, dates.subject)
            # Two certificates with one subject (a CA bundle in a rollover): the first
            # to expire is the one to act on.
            if key not in self._earliest or dates.not_after < self._earliest[key]:
                self._earliest[key] = dates.not_after
                self._gauge.labels(self._service, cert, dates.subject).set(dates.not_after)
