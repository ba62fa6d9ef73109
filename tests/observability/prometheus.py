"""A private Prometheus server (the Debian package's binary) for one test.

Its own config, rules, data directory and log live in a temp dir removed on close; it
listens on a free loopback port and is stopped by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from tests.observability.assets import PROMETHEUS
from tests.support.ports import free_port
from tests.support.processes import terminate

Sample = dict[str, Any]


class PrometheusProcess:
    """`async with PrometheusProcess(jobs={...}, rule_files=[...]) as prom:` then prom.query()."""

    def __init__(
        self,
        *,
        jobs: dict[str, list[str]],
        rule_files: list[Path],
        interval: str = "1s",
        start_timeout: float = 30.0,
        job_options: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.jobs = jobs
        #: Extra scrape_config keys per job name (metrics_path, params, ...).
        self.job_options = job_options or {}
        self.rule_files = rule_files
        self.interval = interval
        self.start_timeout = start_timeout
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="sq-prometheus-"))
        self.log_path = self.workdir / "prometheus.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        return {
            "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval},
            "rule_files": [str(path) for path in self.rule_files],
            "scrape_configs": [
                {
                    "job_name": job,
                    "static_configs": [{"targets": targets}],
                    **self.job_options.get(job, {}),
                }
                for job, targets in self.jobs.items()
            ],
        }

    async def start(self) -> PrometheusProcess:
        config_path = self.workdir / "prometheus.yml"
        # JSON is YAML: no YAML library needed to write the config.
        config_path.write_text(json.dumps(self.config(), indent=2))
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._session = aiohttp.ClientSession()
        try:
            await self._wait_ready()
        except BaseException:
            await self.close()
            raise
        return self

    async def _wait_ready(self) -> None:
        assert self._proc is not None and self._session is not None
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited ({self._proc.returncode}): {self.log_tail()}"
                )
            with contextlib.suppress(aiohttp.ClientError):
                async with self._session.get(self.url + "/-/ready") as resp:
                    if resp.status == 200:
                        return
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus not ready after {self.start_timeout} s")
            await asyncio.sleep(0.1)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by PID, SIGKILL after timeout seconds."""
        proc, self._proc = self._proc, None
        terminate(proc, timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        await asyncio.to_thread(self.stop)
        shutil.rmtree(self.workdir, ignore_errors=True)

    async def __aenter__(self) -> PrometheusProcess:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- HTTP API -----------------------------------------------------------------------

    async def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the "data" of a successful answer, AssertionError otherwise."""
        assert self._session is not None, "start() first"
        async with self._session.get(f"{self.url}/api/v1/{path}", params=params) as resp:
            body = await resp.json()
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    async def query(self, expr: str) -> list[Sample]:
        """Instant query: the result vector."""
        data = await self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[Sample] = data["result"]
        return result

    async def wait_for(self, expr: str, *, timeout: float = 30.0, what: str = "") -> list[Sample]:
        """Poll an instant query until it returns at least one sample."""
        deadline = time.monotonic() + timeout
        while True:
            result = await self.query(expr)
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what or expr}: no result after {timeout} s")
            await asyncio.sleep(0.5)
