"""Who may read and who may change the queues: bearer tokens with a scope, and the
operator's name for the audit log.

Every route that shows parked items, the audit log or the queues needs a token: parked
items carry PatientIDs, patient names and UIDs. A read token (`[retry.read_tokens]`) may
read; an admin token (`[retry] admin_token`, `[retry.admin_tokens]`) may also act. Only
without any token, on a loopback address, and with `allow_anonymous = true` said out loud,
does every caller act as "anonymous".
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

from sendqueue.services.retry.admin.input import BadRequest
from sendqueue.shared.config import Config, RetryConfig, is_loopback, parse_listen
from sendqueue.shared.errors import ConfigError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Scope = Literal["read", "admin"]

#: Who is calling (the token's name), for the audit log; set per request (each request
#: runs in its own task, so its own context).
OPERATOR: ContextVar[str] = ContextVar("sendqueue_operator", default="anonymous")


@dataclass(frozen=True)
class Caller:
    name: str
    scope: Scope


class Access:
    """The tokens and what each may do; `read()` and `act()` guard a route's handler."""

    def __init__(
        self,
        admins: Mapping[str, str],
        readers: Mapping[str, str] | None = None,
        *,
        anonymous: bool = False,
    ) -> None:
        #: token -> Caller; compared in constant time, one by one
        self._callers = [(t.encode(), Caller(n, "read")) for t, n in (readers or {}).items()]
        self._callers += [(t.encode(), Caller(n, "admin")) for t, n in admins.items()]
        self._anonymous = anonymous and not self._callers

    @classmethod
    def from_config(cls, retry: RetryConfig) -> Access:
        return cls(retry.tokens(), retry.readers(), anonymous=retry.allow_anonymous)

    def caller(self, request: web.Request) -> Caller:
        if self._anonymous:
            return Caller("anonymous", "admin")
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise BadRequest(
                "missing 'Authorization: Bearer <token>' header: a read or admin token is needed",
                401,
            )
        presented = given.strip().encode()
        found = None
        for token, caller in self._callers:  # no early exit: same time for every token
            if hmac.compare_digest(presented, token):
                found = caller
        if found is None:
            raise BadRequest("invalid token", 401)
        return found

    def read(self, handler: Handler) -> Handler:
        """The handler, callable with a read or an admin token."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            OPERATOR.set(self.caller(request).name)
            return await handler(request)

        return guarded

    def act(self, handler: Handler) -> Handler:
        """The handler, callable with an admin token only: a read token gets 403."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            caller = self.caller(request)
            if caller.scope != "admin":
                raise BadRequest(
                    f"the token of {caller.name!r} may only read: this needs an admin token"
                    " ([retry] admin_token or [retry.admin_tokens])",
                    403,
                )
            OPERATOR.set(caller.name)
            return await handler(request)

        return guarded

    def add_whoami(self, app: web.Application) -> None:
        """GET /api/whoami: the caller's name and scope (the console hides what it cannot do)."""

        async def whoami(request: web.Request) -> web.Response:
            caller = self.caller(request)
            return web.json_response(
                {"name": caller.name, "scope": caller.scope, "anonymous": self._anonymous}
            )

        app.router.add_get("/api/whoami", whoami)


def check_admin_exposure(config: Config) -> None:
    """Stop the start-up when the admin API would show patient data without a token."""
    retry = config.retry
    host, _ = parse_listen(retry.listen)
    has_tokens = bool(retry.tokens() or retry.readers())
    set_token = (
        "set [retry] admin_token (or env SENDQUEUE_ADMIN_TOKEN), [retry.admin_tokens] or"
        " [retry.read_tokens]"
    )
    if has_tokens:
        if retry.allow_anonymous:
            raise ConfigError(
                "retry.allow_anonymous = true has no effect once a token is set (every call"
                " then needs one): remove allow_anonymous"
            )
        return
    if not is_loopback(host):
        raise ConfigError(
            f"retry.listen is {retry.listen!r}, not a loopback address, and no admin or read"
            " token is set: refusing to expose the admin API (patient data) without"
            f" authentication; {set_token}"
        )
    if not retry.allow_anonymous:
        raise ConfigError(
            "no admin or read token is set for the admin API (it shows patient data and"
            f" changes the queues): {set_token}; or, to let every local process read and act"
            f" without a token on this loopback address ({retry.listen}), set [retry]"
            " allow_anonymous = true"
        )
