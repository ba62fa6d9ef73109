"""Who may change the queues: bearer tokens, and the operator's name for the audit log."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar

from aiohttp import web

from sendqueue.services.retry.admin.input import BadRequest

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Who is calling (the token's name), for the audit log; set per request (each request
#: runs in its own task, so its own context).
OPERATOR: ContextVar[str] = ContextVar("sendqueue_operator", default="anonymous")


class Tokens:
    def __init__(self, tokens: Mapping[str, str]) -> None:
        #: token -> operator name
        self._tokens = dict(tokens)

    def guard(self, handler: Handler) -> Handler:
        """The handler, callable only with a valid token (when tokens are configured)."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            OPERATOR.set(self.operator(request))
            return await handler(request)

        return guarded

    def operator(self, request: web.Request) -> str:
        if not self._tokens:
            return "anonymous"  # only possible on a loopback listen address (checked at start)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise BadRequest("missing 'Authorization: Bearer <token>' header", 401)
        for token, name in self._tokens.items():
            if hmac.compare_digest(given.strip().encode(), token.encode()):
                return name
        raise BadRequest("invalid admin token", 403)
