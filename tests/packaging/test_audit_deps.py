"""scripts/audit-deps: known vulnerabilities fail the run, an unreachable advisory service
is reported without failing it. Against a fake OSV service on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.ports import free_port

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "scripts" / "audit-deps"
ADVISORY = "GHSA-test-0000-0000"


def locked(package: str) -> str:
    """The package's entry in requirements.lock (pinned, with its hashes)."""
    lines = (ROOT / "requirements.lock").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{package}=="))
    entry = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith("    --hash"):
            break
        entry.append(line)
    return "\n".join(entry).rstrip(" \\") + "\n"


@pytest.fixture
def lock(tmp_path: Path) -> Path:
    path = tmp_path / "audit.lock"
    path.write_text(locked("msgspec") + locked("multidict"))
    return path


@pytest.fixture
def osv() -> Iterator[str]:
    """An OSV query endpoint that knows one advisory: against msgspec, any version."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            query = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            name = query["package"]["name"]
            vulns = (
                []
                if name != "msgspec"
                else [
                    {
                        "id": ADVISORY,
                        "summary": "test advisory",
                        "affected": [
                            {
                                "package": {"name": "msgspec", "ecosystem": "PyPI"},
                                "ranges": [
                                    {
                                        "type": "ECOSYSTEM",
                                        "events": [{"introduced": "0"}, {"fixed": "999"}],
                                    }
                                ],
                            }
                        ],
                    }
                ]
            )
            body = json.dumps({"vulns": vulns} if vulns else {}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1/query"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def audit(lock: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(lock)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SENDQUEUE_AUDIT_IGNORE": "", **env},
    )


def test_a_known_vulnerability_is_listed_and_fails_the_run(lock, osv):
    result = audit(lock, SENDQUEUE_AUDIT_OSV_URL=osv)
    assert result.returncode == 1, result.stderr
    assert "VULNERABLE  msgspec" in result.stderr and ADVISORY in result.stderr
    assert "fixed in: 999" in result.stderr
    assert "2 audited, 1 known vulnerabilities" in result.stderr


def test_an_advisory_judged_not_to_apply_can_be_ignored(lock, osv):
    result = audit(lock, SENDQUEUE_AUDIT_OSV_URL=osv, SENDQUEUE_AUDIT_IGNORE=ADVISORY)
    assert result.returncode == 0, result.stderr
    assert "0 known vulnerabilities" in result.stderr


def test_an_unreachable_advisory_service_is_reported_not_fatal(lock):
    nobody = f"http://127.0.0.1:{free_port()}/v1/query"
    result = audit(lock, SENDQUEUE_AUDIT_OSV_URL=nobody)
    assert result.returncode == 0, result.stderr
    assert "WARNING: the dependency audit was not done" in result.stderr
    assert "VULNERABLE" not in result.stderr
