"""The admin HTTP API: list, requeue and delete parked jobs.

    GET  /api/parked                  {"items": [...], "total": N, "next_cursor": ...}
    POST /api/parked/requeue          {"ids": [...]} | {"all": true} | {"destination": "..."}
    POST /api/parked/delete           (same selectors)

Mutating calls need "Authorization: Bearer <admin_token>" when a token is configured.
Every error answers JSON {"error": "..."} with a 4xx status that says what is wrong.
"""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from services.retry.index import Filters, ParkedItem
from services.retry.parking import Action, Parking, Selector
from shared.config import Config
from shared.durations import Duration

log = logging.getLogger(__name__)

_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_MAX_IDS = 100_000
_SELECTORS = ("ids", "all", "destination", "reason", "study", "patient", "since", "until")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def error(message: str, status: int) -> web.Response:
    return web.json_response({"error": message}, status=status)


class AdminApi:
    def __init__(self, config: Config, parking: Parking) -> None:
        self._config = config
        self._parking = parking
        self._token = config.retry.admin_token

    def register(self, app: web.Application) -> None:
        app.middlewares.append(self._errors)
        app.router.add_get("/api/parked", self.list_parked)
        app.router.add_post("/api/parked/requeue", self._mutating(self.requeue))
        app.router.add_post("/api/parked/delete", self._mutating(self.delete))

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except BadRequest as exc:
            return error(str(exc), exc.status)
        except web.HTTPRequestEntityTooLarge:
            return error("request body too large", 413)
        except web.HTTPException as exc:
            if exc.status >= 400 and request.path.startswith("/api/"):
                return error(exc.reason, exc.status)
            raise

    def _mutating(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            self._authorize(request)
            return await handler(request)

        return guarded

    def _authorize(self, request: web.Request) -> None:
        if not self._token:
            return  # only possible on a loopback listen address (checked at start-up)
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise BadRequest("missing 'Authorization: Bearer <token>' header", 401)
        if not hmac.compare_digest(given.strip().encode(), self._token.encode()):
            raise BadRequest("invalid admin token", 403)

    # -- GET /api/parked -----------------------------------------------------------------
    async def list_parked(self, request: web.Request) -> web.Response:
        query = request.query
        unknown = set(query) - {"limit", "cursor", *_SELECTORS}
        if unknown:
            raise BadRequest(f"unknown query parameter(s): {', '.join(sorted(unknown))}")
        filters = self._filters(dict(query))
        limit = _int(query.get("limit", "100"), "limit", 1, 10_000)
        after = _decode_cursor(query["cursor"]) if "cursor" in query else None
        index = self._parking.index
        items = index.page(filters, limit, after)
        body: dict[str, Any] = {
            "items": [_present(i) for i in items],
            "total": index.count(filters),
            "next_cursor": _encode_cursor(items[-1]) if len(items) == limit else None,
        }
        return web.json_response(body)

    # -- POST /api/parked/{requeue,delete} -------------------------------------------------
    async def requeue(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        to = body.pop("to", None)
        if to is not None and (not isinstance(to, str) or self._config.destination(to) is None):
            raise BadRequest(f"'to' must name a configured destination, got {to!r}")
        select = self._selector(body, "requeue")
        result = await self._parking.run_pass(select, to=to)
        return web.json_response({"requeued": result.requeued, "failed": result.failed})

    async def delete(self, request: web.Request) -> web.Response:
        select = self._selector(await _json_body(request), "delete")
        result = await self._parking.run_pass(select)
        return web.json_response({"deleted": result.deleted, "failed": result.failed})

    def _selector(self, body: dict[str, Any], action: Action) -> Selector:
        unknown = set(body) - set(_SELECTORS)
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
        if not body:
            raise BadRequest('say what to select: {"ids": [...]}, {"all": true} or filters')
        if "ids" in body:
            if len(body) > 1:
                raise BadRequest("'ids' cannot be combined with other selectors")
            ids = _ids(body["ids"])
            return lambda item: action if item.id in ids else "keep"
        if "all" in body:
            if body.pop("all") is not True:
                raise BadRequest("'all' must be true")
            if body:
                raise BadRequest("'all' cannot be combined with filters")
            return lambda _item: action
        filters = self._filters(body)
        return lambda item: action if filters.matches(item) else "keep"

    def _filters(self, values: dict[str, Any]) -> Filters:
        destination = values.get("destination")
        if destination is not None:
            known = {d.name for d in self._config.destinations} | self._parking.index.destinations()
            if not isinstance(destination, str) or destination not in known:
                raise BadRequest(f"unknown destination {destination!r}")
        return Filters(
            destination=destination,
            reason_class=_opt_str(values, "reason"),
            study=_opt_str(values, "study"),
            patient=_opt_str(values, "patient"),
            since=_opt_time(values, "since"),
            until=_opt_time(values, "until"),
        )


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = msgspec.json.decode(raw) if raw else {}
    except msgspec.DecodeError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


def _ids(value: Any) -> set[str]:
    if not isinstance(value, list) or not value:
        raise BadRequest("'ids' must be a non-empty list of strings")
    if len(value) > _MAX_IDS:
        raise BadRequest(f"at most {_MAX_IDS} ids per call")
    bad = [v for v in value if not isinstance(v, str) or not _ID.match(v)]
    if bad:
        raise BadRequest(f"malformed id(s): {bad[:5]!r}")
    return set(value)


def _opt_str(values: dict[str, Any], key: str) -> str | None:
    value = values.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 256:
        raise BadRequest(f"'{key}' must be a non-empty string")
    return value


def _opt_time(values: dict[str, Any], key: str) -> float | None:
    """Epoch seconds, ISO-8601, or a duration ago ("2h")."""
    value = values.get(key)
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        try:
            return time.time() - Duration.parse(value)
        except ValueError:
            pass
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=dt.UTC)
            return parsed.timestamp()
        except ValueError:
            pass
    raise BadRequest(f"'{key}' must be epoch seconds, ISO-8601 or a duration like '2h'")


def _int(value: str, name: str, low: int, high: int) -> int:
    if not value.isdigit() or not low <= int(value) <= high:
        raise BadRequest(f"'{name}' must be an integer from {low} to {high}")
    return int(value)


def _encode_cursor(item: ParkedItem) -> str:
    raw = msgspec.json.encode([item.parked_at, item.id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        parked_at, item_id = msgspec.json.decode(base64.urlsafe_b64decode(padded))
        return float(parked_at), str(item_id)
    except Exception:
        raise BadRequest("malformed cursor") from None


def _present(item: ParkedItem) -> dict[str, Any]:
    data = msgspec.structs.asdict(item)
    data["error"] = item.reason
    return data
