"""Client-side TLS contexts for every destination kind, built once from [destinations.tls].

One context serves DICOM TLS (pynetdicom's ``tls_args``) and HTTPS (aiohttp's ``ssl=``):
the same trust rules, verification on unless the config turns it off.
"""

from __future__ import annotations

import socket
import ssl

from sendqueue.shared.config import TlsConfig
from sendqueue.shared.errors import ConfigError


def client_context(tls: TlsConfig, destination: str) -> ssl.SSLContext:
    """A TLS client context; ConfigError naming the key when a file cannot be used."""
    try:
        context = ssl.create_default_context(cafile=tls.ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"destination {destination!r}: tls.ca_file: {exc}") from None
    if tls.cert_file:
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"destination {destination!r}: tls.cert_file/tls.key_file: {exc}"
            ) from None
    if not tls.verify:
        # check_hostname must go first: the setter of verify_mode refuses otherwise.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def handshake_error(
    context: ssl.SSLContext, host: str, port: int, server_name: str, timeout: float
) -> str | None:
    """Why a TLS handshake with host:port fails, or None when it works.

    pynetdicom only logs a failed handshake and reports "not established"; this names the
    cause (an untrusted or expired certificate, a wrong name) for the operator.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            hostname = server_name if context.check_hostname else None
            with context.wrap_socket(raw, server_hostname=hostname):
                return None
    except ssl.SSLError as exc:
        detail = getattr(exc, "verify_message", None) or exc.reason or str(exc)
        return f"TLS handshake failed: {detail}"
    except OSError:
        return None  # not a TLS problem: the caller reports the connection failure
