"""Certificate expiry gauges: notAfter and CN read from certificates openssl makes here,
checked against openssl's own reading of them."""

from __future__ import annotations

import logging
import ssl
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from sendqueue.services.sender.certificates import watch_destination_certificates
from sendqueue.shared.cert_expiry import (
    CertificateError,
    CertificateExpiry,
    read_der,
    read_pem,
    read_pem_file,
)
from sendqueue.shared.config import parse_config
from tests.destinations.pki import Pki, make_pki, openssl_available
from tests.support.availability import unavailable

GAUGE = "sendqueue_tls_cert_expiry_timestamp_seconds"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if not openssl_available():
        unavailable("openssl is not installed")
    return make_pki(tmp_path_factory.mktemp("pki"))


def openssl_not_after(path: Path) -> float:
    """openssl's answer: "notAfter=Jun  5 12:00:00 2025 GMT"."""
    out = subprocess.run(
        ["openssl", "x509", "-enddate", "-noout", "-in", str(path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return float(ssl.cert_time_to_seconds(out.strip().removeprefix("notAfter=")))


def self_signed(directory: Path, name: str, days: int, stem: str = "") -> Path:
    cert, key = directory / f"{stem or name}.pem", directory / f"{stem or name}.key"
    command = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt"]
    command += ["ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key)]
    command += ["-out", str(cert), "-days", str(days), "-subj", f"/O=sendqueue tests/CN={name}"]
    subprocess.run(
        command,
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert


def test_a_certificate_s_not_after_and_common_name_are_openssl_s(pki: Pki) -> None:
    (dates,) = read_pem_file(str(pki.client_cert))
    assert dates.not_after == openssl_not_after(pki.client_cert)
    assert dates.subject == "client"


def test_a_date_after_2049_is_read_from_its_generalized_time(tmp_path: Path) -> None:
    # RFC 5280: UTCTime until 2049, GeneralizedTime from 2050 on; 12000 days reach 2050+.
    cert = self_signed(tmp_path, "long-lived", days=12000)
    (dates,) = read_pem_file(str(cert))
    assert dates.not_after == openssl_not_after(cert)
    assert dates.not_after > 2524608000  # 2050-01-01
    assert dates.subject == "long-lived"


def test_every_certificate_of_a_bundle_is_read_in_order_and_keys_are_skipped(
    pki: Pki, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(
        pki.ca.read_bytes() + pki.client_key.read_bytes() + pki.other_ca.read_bytes()
    )
    found = read_pem_file(str(bundle))
    assert [d.subject for d in found] == ["sendqueue test ca", "sendqueue test other-ca"]
    assert [d.not_after for d in found] == [
        openssl_not_after(pki.ca),
        openssl_not_after(pki.other_ca),
    ]


def test_what_is_no_certificate_is_refused_with_a_reason() -> None:
    assert read_pem(b"no PEM here") == []
    with pytest.raises(CertificateError):
        read_der(b"\x30\x03\x02\x01\x01")  # a SEQUENCE holding an INTEGER only
    with pytest.raises(CertificateError):
        read_der(b"\x30\x85\x01")  # a length of 5 bytes
    with pytest.raises(CertificateError):
        read_pem(b"-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n")


def test_the_gauge_takes_a_path_and_a_label(pki: Pki) -> None:
    # What the admin listen's certificate will need: one call, a file and what it is for
    registry = CollectorRegistry()
    CertificateExpiry(registry, service="retry").watch(str(pki.server_cert), cert="admin")
    labels = {"service": "retry", "cert": "admin", "subject": "server"}
    assert registry.get_sample_value(GAUGE, labels) == openssl_not_after(pki.server_cert)


def test_an_unreadable_file_is_logged_and_exports_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    expiry = CertificateExpiry(registry, service="sender")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n")
    caplog.set_level(logging.WARNING, logger="sendqueue.shared.cert_expiry")
    expiry.watch(str(tmp_path / "missing.pem"), cert="destination/a/ca")
    expiry.watch(str(garbage), cert="destination/b/ca")
    assert [s for m in registry.collect() for s in m.samples] == []
    assert len(caplog.records) == 2
    assert "destination/b/ca" in caplog.records[1].getMessage()


def test_two_certificates_with_one_subject_show_the_first_to_expire(tmp_path: Path) -> None:
    # A CA bundle during a rollover: the old CA and its successor share their name
    old = self_signed(tmp_path, "rollover-ca", days=3, stem="old")
    new = self_signed(tmp_path, "rollover-ca", days=400, stem="new")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(new.read_bytes() + old.read_bytes())
    registry = CollectorRegistry()
    CertificateExpiry(registry, service="sender").watch(str(bundle), cert="destination/p/ca")
    labels = {"service": "sender", "cert": "destination/p/ca", "subject": "rollover-ca"}
    assert registry.get_sample_value(GAUGE, labels) == openssl_not_after(old)


def test_the_sender_watches_each_destination_s_client_certificate_and_cas(pki: Pki) -> None:
    config = parse_config(
        {
            "destinations": [
                {
                    "name": "secure",
                    "host": "127.0.0.1",
                    "tls": {
                        "ca_file": str(pki.ca),
                        "cert_file": str(pki.client_cert),
                        "key_file": str(pki.client_key),
                    },
                },
                {"name": "system-cas", "host": "127.0.0.1", "tls": {}},
                {"name": "plain", "host": "127.0.0.1"},
            ]
        },
        environ={},
    )
    registry = CollectorRegistry()
    watch_destination_certificates(
        CertificateExpiry(registry, service="sender"), config.destinations
    )
    samples = {
        (s.labels["cert"], s.labels["subject"]): s.value
        for metric in registry.collect()
        for s in metric.samples
    }
    assert samples == {
        ("destination/secure/client", "client"): openssl_not_after(pki.client_cert),
        ("destination/secure/ca", "sendqueue test ca"): openssl_not_after(pki.ca),
    }
