"""The audit log: who did what to the queues, when, and to how many items (SQLite), and
GET /api/audit, which shows it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from sendqueue.services.retry.admin import input as inp
from sendqueue.services.retry.admin.auth import Access
from sendqueue.shared.sqlite_file import open_db


class AuditLog:
    def __init__(self, path: Path) -> None:
        self._db = open_db(
            path,
            schema=(
                "CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                "time REAL, who TEXT, action TEXT, details TEXT, count INTEGER)",
            ),
        )

    def close(self) -> None:
        self._db.close()

    def record(self, who: str, action: str, details: dict[str, Any], count: int | None) -> int:
        """Written before the answer goes out; durable once this returns (WAL, fsync'd)."""
        cursor = self._db.execute(
            "INSERT INTO audit (time, who, action, details, count) VALUES (?, ?, ?, ?, ?)",
            (time.time(), who, action, json.dumps(details, sort_keys=True), count),
        )
        return int(cursor.lastrowid or 0)

    def update_count(self, entry: int, count: int) -> None:
        self._db.execute("UPDATE audit SET count = ? WHERE id = ?", (count, entry))

    def page(self, limit: int, before: int | None = None) -> list[dict[str, Any]]:
        """Newest first; `before` is the id of the previous page's last entry."""
        where, values = ("WHERE id < ?", [before]) if before else ("", [])
        rows = self._db.execute(
            f"SELECT id, time, who, action, details, count FROM audit {where} "
            "ORDER BY id DESC LIMIT ?",
            [*values, limit],
        ).fetchall()
        return [
            {
                "id": r[0],
                "time": r[1],
                "who": r[2],
                "action": r[3],
                "details": json.loads(r[4]),
                "count": r[5],
            }
            for r in rows
        ]


def add_audit_route(app: web.Application, audit: AuditLog, access: Access) -> None:
    async def show(request: web.Request) -> web.Response:
        query = request.query
        limit = inp.bounded_int(query.get("limit", "100"), "limit", 1, 1000)
        cursor = query.get("cursor")
        before = inp.bounded_int(cursor, "cursor", 1, 2**62) if cursor is not None else None
        items = audit.page(limit, before)
        next_cursor = str(items[-1]["id"]) if len(items) == limit else None
        return web.json_response({"items": items, "next_cursor": next_cursor})

    app.router.add_get("/api/audit", access.read(show))
