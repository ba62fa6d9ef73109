"""`sendqueue healthz`: the container health check, against small HTTP servers."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from sendqueue.services.cli.healthz import listens_of, run_healthz
from tests.integration.harness import to_toml
from tests.support.ports import free_port


def _config(tmp_path: Path, **listens: str) -> Path:
    path = tmp_path / "sendqueue.toml"
    path.write_text(to_toml({name: {"listen": listen} for name, listen in listens.items()}))
    return path


def test_the_listen_comes_from_the_command_line_or_the_service_section(tmp_path):
    config = str(_config(tmp_path, ingest="0.0.0.0:7100", sender="127.0.0.1:7101"))
    assert listens_of(["sendqueue", "sender", "--config", config]) == ["127.0.0.1:7101"]
    argv = ["/usr/local/bin/sendqueue", "sender", "--config", config, "--listen", "1.2.3.4:9"]
    assert listens_of(argv) == ["1.2.3.4:9"]
    assert listens_of(["python", "-m", "sendqueue.services.cli", "run", "--config", config]) == [
        "0.0.0.0:7100",
        "127.0.0.1:7101",
        "127.0.0.1:8102",
    ]
    with pytest.raises(ValueError, match="not a sendqueue service"):
        listens_of(["nginx", "-g", "daemon off;"])


@pytest.fixture
async def health_server() -> AsyncIterator[tuple[str, list[int]]]:
    status = [200]

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok" if status[0] == 200 else "x"}, status=status[0])

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"127.0.0.1:{port}", status
    await runner.cleanup()


async def test_exit_0_while_healthy_1_when_degraded_or_silent(health_server, tmp_path, capsys):
    listen, status = health_server
    config = _config(tmp_path, retry=listen)
    cmdline = tmp_path / "cmdline"
    cmdline.write_bytes(b"\0".join([b"sendqueue", b"retry", b"--config", str(config).encode()]))
    args = argparse.Namespace(listen=None)

    assert await asyncio.to_thread(run_healthz, args, cmdline) == 0
    status[0] = 503
    assert await asyncio.to_thread(run_healthz, args, cmdline) == 1
    silent = argparse.Namespace(listen=f"127.0.0.1:{free_port()}")
    assert await asyncio.to_thread(run_healthz, silent, cmdline) == 1
    assert "FAIL" in capsys.readouterr().out


def test_a_pid_1_that_is_not_sendqueue_is_a_usage_error(tmp_path):
    cmdline = tmp_path / "cmdline"
    cmdline.write_bytes(b"/bin/sh\0-c\0sleep 1")
    assert run_healthz(argparse.Namespace(listen=None), cmdline) == 2
