"""A throw-away PKI made with the openssl command: a CA, a server and a client certificate.

EC P-256 keys keep it fast (~50 ms in all). Certificates carry the extensions Python's
strict verification wants (CA basicConstraints and keyUsage, key identifiers, SANs).
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    #: A CA that signed nothing here: trusting only it must fail the handshake.
    other_ca: Path

    def server_context(self, *, require_client_cert: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.server_cert, self.server_key)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.ca)
        return context

    def server_pem_bundle(self, path: Path) -> Path:
        """Certificate and key in one PEM file, as Orthanc's SslCertificate wants."""
        path.write_text(self.server_cert.read_text() + self.server_key.read_text())
        return path


def openssl_available() -> bool:
    return shutil.which("openssl") is not None


def _run(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


def _make_ca(directory: Path, name: str, days: int = 2) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _run(
        "req",
        "-x509",
        *_KEY,
        "-keyout",
        str(key),
        "-out",
        str(cert),
        "-days",
        str(days),
        "-subj",
        f"/CN=sendqueue test {name}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    return cert, key


def _make_leaf(
    directory: Path, name: str, ca: tuple[Path, Path], usage: str, days: int = 2
) -> tuple[Path, Path]:
    cert, key, csr = (directory / f"{name}{ext}" for ext in (".pem", ".key", ".csr"))
    ext = directory / f"{name}.ext"
    ext.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage={usage}\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    _run("req", *_KEY, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    _run(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca[0]),
        "-CAkey",
        str(ca[1]),
        "-CAcreateserial",
        "-out",
        str(cert),
        "-days",
        str(days),
        "-extfile",
        str(ext),
    )
    return cert, key


def make_pki(directory: Path, days: int = 2) -> Pki:
    """Certificates valid for `days` (2: under the 14 days of SendqueueCertificateExpiring)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _make_ca(directory, "ca", days)
    other_ca, _ = _make_ca(directory, "other-ca", days)
    server = _make_leaf(directory, "server", ca, "serverAuth", days)
    client = _make_leaf(directory, "client", ca, "clientAuth", days)
    return Pki(ca[0], server[0], server[1], client[0], client[1], other_ca)
