"""What keeps a browser from being used against the admin API, and its optional TLS.

- DNS rebinding: a page on evil.example whose name is re-pointed at 127.0.0.1 would be
  same-origin with the admin API. Its requests still say `Host: evil.example`, so only IP
  addresses (a rebinding needs a name), `localhost`, the listen host and `[retry]
  allowed_hosts` are answered.
- Cross-site requests: a form or a "simple" fetch from another site can POST, but cannot
  set `Content-Type: application/json` or an `Authorization` header without a CORS
  preflight, which this API never grants. So every POST needs both (the token is checked
  in auth.py), and an `Origin` other than the API's own is refused.
- Every answer says: no inline or foreign script (CSP), no MIME sniffing, no framing, no
  caching (patient data must not stay in a shared browser's cache).

/metrics and /healthz stay outside the Host check: scrapers and health checks address the
service by whatever name their network gives it, and neither shows patient data.
"""

from __future__ import annotations

import ipaddress
import ssl
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

from sendqueue.services.retry.admin.auth import Handler
from sendqueue.services.retry.admin.input import BadRequest
from sendqueue.shared.config import RetryConfig, parse_listen
from sendqueue.shared.errors import ConfigError

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
        " connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}
#: Paths any network name may ask for (no patient data, no state change).
_ANY_HOST = ("/metrics", "/healthz")


def allowed_host_names(retry: RetryConfig) -> frozenset[str]:
    host, _ = parse_listen(retry.listen)
    names = {"localhost", host.lower(), *(h.lower() for h in retry.allowed_hosts)}
    return frozenset(names)


def _host_name(host_header: str) -> str:
    """`name:port`, `[v6]:port`, `v4` -> the name or address, lower-case."""
    if host_header.startswith("["):
        return host_header[1 : host_header.find("]")].lower()
    return host_header.rsplit(":", 1)[0].lower() if ":" in host_header else host_header.lower()


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def hardening_middleware(allowed: frozenset[str], origins: frozenset[str]) -> Middleware:
    @web.middleware
    async def harden(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in _ANY_HOST:
            _check_host(request, allowed)
        if request.path.startswith("/api/"):
            _check_origin(request, origins)
            if request.method == "POST":
                _check_content_type(request)
        return await handler(request)

    return harden


def _check_host(request: web.Request, allowed: frozenset[str]) -> None:
    name = _host_name(request.headers.get("Host", ""))
    if not name or (name not in allowed and not _is_address(name)):
        raise BadRequest(
            f"this service does not answer to the host name {name!r} (a guard against DNS"
            " rebinding): add it to [retry] allowed_hosts, or use an IP address",
            421,
        )


def _check_origin(request: web.Request, origins: frozenset[str]) -> None:
    """The console's own page, or one served under a name of `allowed_hosts` (a reverse
    proxy may pass another Host than the name in the browser)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return
    parts = urlsplit(origin)
    if origin != "null" and (
        parts.netloc.lower() == request.host.lower() or (parts.hostname or "") in origins
    ):
        return
    raise BadRequest(f"cross-origin requests are refused (Origin {origin!r})", 403)


def _check_content_type(request: web.Request) -> None:
    if request.content_type != "application/json":
        raise BadRequest(
            "a POST needs 'Content-Type: application/json' (so that no other web page can"
            f" send one); got {request.headers.get('Content-Type', 'none')!r}",
            415,
        )


async def add_security_headers(_request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


def harden(app: web.Application, retry: RetryConfig) -> None:
    """The Host, Origin and Content-Type checks, and the security headers, on `app`."""
    origins = frozenset(h.lower() for h in retry.allowed_hosts)
    app.middlewares.append(hardening_middleware(allowed_host_names(retry), origins))
    app.on_response_prepare.append(add_security_headers)


def tls_context(retry: RetryConfig) -> ssl.SSLContext | None:
    """The admin listen's TLS context from [retry] tls_cert/tls_key; None for plain HTTP."""
    if not retry.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(retry.tls_cert, retry.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"retry.tls_cert / retry.tls_key: cannot load {retry.tls_cert!r} with"
            f" {retry.tls_key!r}: {exc}"
        ) from None
    return context
