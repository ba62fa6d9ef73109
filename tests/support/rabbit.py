"""Throw-away RabbitMQ vhosts for tests, through the management HTTP API.

Every test gets its own vhost, so queues, exchanges and messages of one test never leak into
another, and deleting the vhost removes them all at once. The HTTP API (~10 ms a call) is
used rather than rabbitmqctl (~1 s a call: it starts an Erlang VM each time).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import quote

MGMT_URL = os.environ.get("SQ_TEST_RABBIT_MGMT_URL", "http://127.0.0.1:15672")
AMQP_HOST = os.environ.get("SQ_TEST_RABBIT_HOST", "127.0.0.1:5672")
USER = "guest"
PASSWORD = "guest"


@dataclass(frozen=True)
class RabbitVhost:
    name: str
    amqp_url: str


class QueueCounts(NamedTuple):
    ready: int
    unacked: int


def amqp_url_for(vhost: str) -> str:
    """AMQP URL for vhost; the vhost is the URL path, so it is percent-encoded ('/' too)."""
    return f"amqp://{USER}:{PASSWORD}@{AMQP_HOST}/{quote(vhost, safe='')}"


def management_request(method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(MGMT_URL + path, data=data, method=method)
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    req.add_header("Authorization", f"Basic {token}")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def management_available(timeout: float = 2.0) -> bool:
    """True when the management API answers (so RabbitMQ itself is up)."""
    try:
        management_request("GET", "/api/overview", timeout=timeout)
    except (OSError, ValueError):
        return False
    return True


def create_vhost(name: str | None = None) -> RabbitVhost:
    """Create a vhost (default name sq-test-<8 hex>) and give guest full rights on it."""
    name = name or f"sq-test-{uuid.uuid4().hex[:8]}"
    vh = quote(name, safe="")
    management_request("PUT", f"/api/vhosts/{vh}", {"description": "sendqueue test"})
    rights = {"configure": ".*", "write": ".*", "read": ".*"}
    management_request("PUT", f"/api/permissions/{vh}/{USER}", rights)
    return RabbitVhost(name=name, amqp_url=amqp_url_for(name))


def delete_vhost(name: str) -> None:
    """Delete a vhost and everything in it; a vhost that is already gone is fine."""
    try:
        management_request("DELETE", f"/api/vhosts/{quote(name, safe='')}")
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise


def vhost_exists(name: str) -> bool:
    try:
        management_request("GET", f"/api/vhosts/{quote(name, safe='')}")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise
    return True


@contextmanager
def temp_vhost() -> Iterator[RabbitVhost]:
    """A fresh vhost for the duration of the block, deleted afterwards."""
    vhost = create_vhost()
    try:
        yield vhost
    finally:
        delete_vhost(vhost.name)


def list_queues(vhost: str) -> list[dict[str, Any]]:
    """The management API's queue objects of vhost (name, type, messages_ready, ...).

    Message counts in these objects are statistics, refreshed every few seconds by the broker
    (collect_statistics_interval): use queue_counts(exact=True) or wait_queue_counts().
    """
    result: list[dict[str, Any]] = management_request("GET", f"/api/queues/{quote(vhost, safe='')}")
    return result


def queue_counts(vhost: str, name: str, *, exact: bool = False) -> QueueCounts:
    """Ready and unacknowledged messages of a queue.

    By default from the management API: fast, but up to ~5 s old (statistics interval).
    exact=True asks the broker through rabbitmqctl instead: current, but ~0.5 s a call.
    """
    if exact:
        return _exact_counts(vhost, name)
    path = f"/api/queues/{quote(vhost, safe='')}/{quote(name, safe='')}"
    queue = management_request("GET", path)
    return QueueCounts(
        ready=int(queue.get("messages_ready", 0)),
        unacked=int(queue.get("messages_unacknowledged", 0)),
    )


def _exact_counts(vhost: str, name: str) -> QueueCounts:
    cmd = [
        "rabbitmqctl",
        "-q",
        "list_queues",
        "-p",
        vhost,
        "--formatter",
        "json",
        "name",
        "messages_ready",
        "messages_unacknowledged",
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30).stdout
    for queue in json.loads(out):
        if queue["name"] == name:
            return QueueCounts(int(queue["messages_ready"]), int(queue["messages_unacknowledged"]))
    raise LookupError(f"no queue {name!r} in vhost {vhost!r}")


def wait_queue_counts(
    vhost: str,
    name: str,
    *,
    ready: int | None = None,
    unacked: int | None = None,
    timeout: float = 15.0,
    exact: bool = False,
) -> QueueCounts:
    """Poll until the queue shows the expected counts (None = any); TimeoutError otherwise.

    The management statistics lag the queue by up to collect_statistics_interval (5 s by
    default), hence a polling helper with a generous default timeout; exact=True polls
    through rabbitmqctl instead (current numbers, ~0.5 s a poll).
    """
    deadline = time.monotonic() + timeout
    while True:
        counts = _counts_or_none(vhost, name, exact)
        if counts and _matches(counts, ready, unacked):
            return counts
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"queue {name!r} in {vhost!r}: {counts}, wanted ready={ready} unacked={unacked}"
            )
        time.sleep(0.25)


def _counts_or_none(vhost: str, name: str, exact: bool) -> QueueCounts | None:
    try:
        return queue_counts(vhost, name, exact=exact)
    except LookupError:  # not declared yet (rabbitmqctl)
        return None
    except urllib.error.HTTPError as exc:
        if exc.code == 404:  # not declared yet (management API)
            return None
        raise


def _matches(counts: QueueCounts, ready: int | None, unacked: int | None) -> bool:
    return (ready is None or counts.ready == ready) and (
        unacked is None or counts.unacked == unacked
    )


def list_test_vhosts() -> list[str]:
    """Names of vhosts that tests created and did not delete (for leak checks)."""
    vhosts = management_request("GET", "/api/vhosts")
    return [v["name"] for v in vhosts if v["name"].startswith("sq-test-")]


def listed_connections(
    vhost: str, expected: int, client_prefix: str = "", timeout: float = 30
) -> list[str]:
    """Names of the vhost's AMQP connections whose client-given name starts with
    client_prefix, once the management API lists `expected` of them.

    It lists a new connection only after its first stats emission (every 5 s by default).
    """
    deadline = time.monotonic() + timeout
    path = f"/api/vhosts/{quote(vhost, safe='')}/connections"
    while True:
        names = [
            c["name"]
            for c in management_request("GET", path)
            if str(c.get("user_provided_name") or "").startswith(client_prefix)
        ]
        if len(names) >= expected:
            return names
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(names)} connections listed after {timeout}s")
        time.sleep(0.2)


def close_connections(names: list[str]) -> None:
    """Force-close AMQP connections, as a broker restart or a network cut would."""
    for name in names:
        management_request("DELETE", f"/api/connections/{quote(name, safe='')}")
