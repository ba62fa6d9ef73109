"""Every route of the admin app, in process: who may call it, and the browser guards.

The routes are registered as the retry service registers them; the parts behind them are
never reached, because each call here is refused before its handler runs, or answers
from the guards alone (/api/whoami, the console's files, the OpenAPI document).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sendqueue.services.retry.admin.api import add_admin_api
from sendqueue.services.retry.admin.hardening import SECURITY_HEADERS
from sendqueue.services.retry.admin.openapi import OPENAPI
from sendqueue.shared.config import parse_config

ADMIN = "admin-token-0123456789"
OPS = "ops-token-0123456789ab"
READER = "reader-token-0123456789"
#: The only /api/ route anyone may read without a token: it holds no data.
PUBLIC_API = {"/api/openapi.json"}


def _config(**retry: Any) -> Any:
    return parse_config(
        {
            "retry": {"listen": "127.0.0.1:8102", **retry},
            "destinations": [{"name": "pacs", "host": "127.0.0.1", "called_aet": "PACS"}],
        },
        environ={},
    )


def _unreachable(_request: web.Request) -> Any:
    raise AssertionError("a refused call reached its handler")


def admin_app(**retry: Any) -> web.Application:
    app = web.Application()
    add_admin_api(
        app,
        config=_config(**retry),
        parking=None,  # type: ignore[arg-type]
        audit=None,  # type: ignore[arg-type]
        pauses=None,  # type: ignore[arg-type]
        overview=None,  # type: ignore[arg-type]
        send=_unreachable,
    )
    return app


@pytest.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = admin_app(admin_token=ADMIN, admin_tokens={"ops": OPS}, read_tokens={"auditor": READER})
    async with TestClient(TestServer(app, host="127.0.0.1")) as test_client:
        yield test_client


def api_routes(app: web.Application) -> set[tuple[str, str]]:
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith("/api/")
        and route.method != "HEAD"
    }


def concrete(path: str) -> str:
    return path.replace("{name}", "pacs")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_the_openapi_document_lists_every_route_the_app_serves():
    served = api_routes(admin_app(admin_token=ADMIN))
    described = {
        (method.upper(), path) for path, item in OPENAPI["paths"].items() for method in item
    }
    assert served == described


async def test_no_route_but_the_document_answers_without_a_token(client):
    for method, path in sorted(api_routes(client.app)):
        if path in PUBLIC_API:
            continue
        for headers in ({}, bearer("not-a-token-of-any-kind"), {"Authorization": ADMIN}):
            response = await client.request(
                method, concrete(path), json={} if method == "POST" else None, headers=headers
            )
            assert response.status == 401, (method, path, headers, await response.text())
            assert "token" in (await response.json())["error"]
    response = await client.get("/api/openapi.json")
    assert response.status == 200 and "paths" in await response.json()


async def test_a_read_token_is_refused_every_state_change(client):
    posts = [path for method, path in api_routes(client.app) if method == "POST"]
    assert {"/api/parked/requeue", "/api/parked/delete", "/api/send"} <= set(posts)
    for path in posts:
        response = await client.post(concrete(path), json={"all": True}, headers=bearer(READER))
        assert response.status == 403, (path, await response.text())
        assert "may only read" in (await response.json())["error"]


async def test_whoami_names_the_token_and_its_scope(client):
    for token, expected in (
        (READER, {"name": "auditor", "scope": "read"}),
        (OPS, {"name": "ops", "scope": "admin"}),
        (ADMIN, {"name": "admin", "scope": "admin"}),
    ):
        response = await client.get("/api/whoami", headers=bearer(token))
        assert await response.json() == {**expected, "anonymous": False}


async def test_a_post_without_a_json_content_type_is_refused_even_with_a_token(client):
    # What a cross-site <form> or a "simple" fetch can send without a CORS preflight.
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        response = await client.post(
            "/api/parked/delete",
            data=b'{"all": true}',
            headers={**bearer(ADMIN), "Content-Type": content_type},
        )
        assert response.status == 415, content_type
        assert "application/json" in (await response.json())["error"]
    response = await client.post("/api/destinations/pacs/pause", headers=bearer(ADMIN))
    assert response.status == 415


async def test_a_foreign_origin_is_refused(client):
    for origin in ("http://evil.example", "null", "http://127.0.0.1:1"):
        response = await client.get("/api/whoami", headers={**bearer(READER), "Origin": origin})
        assert response.status == 403, origin
    own = f"http://{client.host}:{client.port}"
    response = await client.get("/api/whoami", headers={**bearer(READER), "Origin": own})
    assert response.status == 200


async def test_a_host_name_outside_the_allow_list_is_refused_against_dns_rebinding(client):
    for host in ("evil.example", "evil.example:8102", "localhost.evil.example"):
        for path in ("/api/whoami", "/console/", "/api/openapi.json"):
            response = await client.get(path, headers={**bearer(READER), "Host": host})
            assert response.status == 421, (host, path)
            assert "allowed_hosts" in (await response.json())["error"]
    for host in ("localhost:8102", "127.0.0.1", "[::1]:8102", "10.1.2.3:8102", "LOCALHOST"):
        response = await client.get("/api/whoami", headers={**bearer(READER), "Host": host})
        assert response.status == 200, host
    # Scrapers and health checks use whatever name their network gives the service.
    response = await client.get("/healthz", headers={"Host": "retry.internal"})
    assert response.status != 421


async def test_allowed_hosts_are_answered():
    app = admin_app(admin_token=ADMIN, allowed_hosts=["sendqueue.example.org"])
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        headers = {**bearer(ADMIN), "Host": "sendqueue.example.org:8102"}
        assert (await client.get("/api/whoami", headers=headers)).status == 200
        # Behind a reverse proxy that passes its own Host, the page's Origin is the name
        proxied = {**bearer(ADMIN), "Origin": "https://sendqueue.example.org"}
        assert (await client.get("/api/whoami", headers=proxied)).status == 200
        foreign = {**bearer(ADMIN), "Origin": "https://sendqueue.example.org.evil.example"}
        assert (await client.get("/api/whoami", headers=foreign)).status == 403


async def test_every_answer_carries_the_security_headers(client):
    answers = [
        await client.get("/"),
        await client.get("/console/console.js"),
        await client.get("/api/openapi.json"),
        await client.get("/api/whoami", headers=bearer(READER)),
        await client.get("/api/parked"),  # 401
        await client.post("/api/parked/delete", json={}, headers=bearer(READER)),  # 403
        await client.get("/api/whoami", headers={"Host": "evil.example"}),  # 421
        await client.get("/api/no-such-route", headers=bearer(READER)),  # 404
    ]
    for response in answers:
        for name, value in SECURITY_HEADERS.items():
            assert response.headers.get(name) == value, (response.url, name)
    csp = SECURITY_HEADERS["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert SECURITY_HEADERS["Cache-Control"] == "no-store"


async def test_anonymous_access_only_where_it_was_allowed_out_loud():
    app = admin_app(allow_anonymous=True)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        response = await client.get("/api/whoami")
        assert await response.json() == {"name": "anonymous", "scope": "admin", "anonymous": True}
        # Still no cross-site POST: the JSON content type is required without tokens too.
        response = await client.post("/api/parked/delete", data=b"{}")
        assert response.status == 415
