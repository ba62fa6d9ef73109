"""Validation of admin API input: every mistake becomes a 4xx with words that say what."""

from __future__ import annotations

import base64
import datetime as dt
import re
import time
from typing import Any

import msgspec
from aiohttp import web

from sendqueue.services.retry.parking.index import ParkedItem
from sendqueue.shared.durations import Duration

_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
MAX_IDS = 100_000
#: Body keys and query parameters that select parked items.
SELECTORS = (
    "ids",
    "all",
    "destination",
    "reason",
    "study",
    "patient",
    "orthanc_job",
    "since",
    "until",
)


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


async def json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = msgspec.json.decode(raw) if raw else {}
    except msgspec.DecodeError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        # Deeply nested JSON: a RuntimeError, which must not pass for RabbitMQ's.
        raise BadRequest("body is nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


def ids(value: Any) -> set[str]:
    if not isinstance(value, list) or not value:
        raise BadRequest("'ids' must be a non-empty list of strings")
    if len(value) > MAX_IDS:
        raise BadRequest(f"at most {MAX_IDS} ids per call")
    bad = [v for v in value if not isinstance(v, str) or not _ID.match(v)]
    if bad:
        raise BadRequest(f"malformed id(s): {bad[:5]!r}")
    return set(value)


def opt_str(values: dict[str, Any], key: str) -> str | None:
    value = values.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 256:
        raise BadRequest(f"'{key}' must be a non-empty string")
    return value


def opt_time(values: dict[str, Any], key: str) -> float | None:
    """Epoch seconds, ISO-8601, or a duration ago ("2h")."""
    value = values.get(key)
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        for parse in (float, _ago, _iso):
            try:
                return parse(value)
            except ValueError:
                continue
    raise BadRequest(f"'{key}' must be epoch seconds, ISO-8601 or a duration like '2h'")


def _ago(value: str) -> float:
    return time.time() - Duration.parse(value)


def _iso(value: str) -> float:
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def bounded_int(value: str, name: str, low: int, high: int) -> int:
    if not value.isdigit() or not low <= int(value) <= high:
        raise BadRequest(f"'{name}' must be an integer from {low} to {high}")
    return int(value)


def encode_cursor(item: ParkedItem) -> str:
    raw = msgspec.json.encode([item.parked_at, item.id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        parked_at, item_id = msgspec.json.decode(base64.urlsafe_b64decode(padded))
        return float(parked_at), str(item_id)
    except Exception:
        raise BadRequest("malformed cursor") from None
