"""A headless Chromium for tests, driven through chromedriver's W3C WebDriver HTTP API.

No Selenium: the few WebDriver endpoints a page test needs are plain JSON over HTTP. The
client is async (aiohttp) because the services under test run in the test's event loop: a
blocking call here would stop them from answering the browser.

Chromium is started here, not by chromedriver (which attaches to it through its DevTools
port), so both are stopped by their own PIDs, with their process groups, and the throw-away
profile directory is removed afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from tests.support.ports import free_port

CHROMIUM = os.environ.get("SQ_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("SQ_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")

#: No network beyond loopback, no background services: a quiet, reproducible browser.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
    "--remote-debugging-address=127.0.0.1",
]

#: The W3C key under which an element reference is returned.
_ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


class WebDriverError(AssertionError):
    """chromedriver answered with an error (no such element, not interactable, ...)."""


class Browser:
    """One Chromium with one WebDriver session; use as `async with Browser() as browser`."""

    def __init__(self, start_timeout: float = 20.0) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="sq-browser-"))
        self.log_path = self._dir / "browser.log"
        self._start_timeout = start_timeout
        self._procs: list[subprocess.Popen[bytes]] = []
        self._http: aiohttp.ClientSession | None = None
        self._base = ""

    async def __aenter__(self) -> Browser:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- life cycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        debug_port = free_port()
        self._spawn(
            CHROMIUM,
            *CHROMIUM_FLAGS,
            f"--remote-debugging-port={debug_port}",
            f"--user-data-dir={self._dir / 'profile'}",
            "about:blank",
        )
        await self._wait_http(f"http://127.0.0.1:{debug_port}/json/version")
        driver_port = free_port()
        self._spawn(CHROMEDRIVER, f"--port={driver_port}", "--allowed-ips=127.0.0.1")
        self._base = f"http://127.0.0.1:{driver_port}"
        await self._wait_http(self._base + "/status")
        options = {"debuggerAddress": f"127.0.0.1:{debug_port}"}
        answer = await self._call(
            "POST", "/session", {"capabilities": {"alwaysMatch": {"goog:chromeOptions": options}}}
        )
        self._base += f"/session/{answer['sessionId']}"

    async def close(self) -> None:
        if self._http is not None:
            if "/session/" in self._base:
                with contextlib.suppress(Exception):
                    async with self._http.delete(self._base):
                        pass
            await self._http.close()
            self._http = None
        for proc in reversed(self._procs):
            _stop(proc)
        self._procs.clear()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _spawn(self, *command: str) -> None:
        with open(self.log_path, "ab") as log:
            # Own session: stopping the group also stops Chromium's renderer/zygote children.
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # Chromium leaves an org.chromium.Chromium.* dir in TMPDIR: keep it in ours.
                env={**os.environ, "TMPDIR": str(self._dir)},
            )
        self._procs.append(proc)

    async def _wait_http(self, url: str) -> None:
        assert self._http is not None
        deadline = time.monotonic() + self._start_timeout
        while True:
            for proc in self._procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args!r} exited ({proc.returncode}); see log")
            with contextlib.suppress(aiohttp.ClientError):
                async with self._http.get(url) as response:
                    if response.status == 200:
                        return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {self._start_timeout}s")
            await asyncio.sleep(0.1)

    # -- WebDriver calls --------------------------------------------------------------------
    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        assert self._http is not None, "browser not started"
        async with self._http.request(method, self._base + path, json=body) as response:
            answer = json.loads(await response.text())
        value = answer.get("value")
        if response.status >= 400:
            error = value.get("error") if isinstance(value, dict) else value
            message = value.get("message", "") if isinstance(value, dict) else ""
            raise WebDriverError(f"{method} {path}: {error}: {message.splitlines()[:1]}")
        return value

    async def goto(self, url: str) -> None:
        await self._call("POST", "/url", {"url": url})

    async def script(self, source: str, *args: Any) -> Any:
        """Run `source` as a function body in the page; `arguments[i]` are args."""
        return await self._call("POST", "/execute/sync", {"script": source, "args": list(args)})

    async def find(self, css: str) -> str:
        found = await self._call("POST", "/element", {"using": "css selector", "value": css})
        return str(found[_ELEMENT])

    async def click(self, css: str) -> None:
        """A real click: WebDriver refuses it when the element is hidden or covered.

        A page that redraws (a live table) may replace the element between finding and
        clicking it: then it is found again, a few times.
        """
        for attempt in range(3):
            try:
                await self._call("POST", f"/element/{await self.find(css)}/click", {})
                return
            except WebDriverError as exc:
                if "stale element" not in str(exc) or attempt == 2:
                    raise

    async def fill(self, css: str, text: str) -> None:
        element = await self.find(css)
        await self._call("POST", f"/element/{element}/clear", {})
        await self._call("POST", f"/element/{element}/value", {"text": text})

    async def text(self, css: str) -> str:
        return str(await self._call("GET", f"/element/{await self.find(css)}/text"))

    async def wait(self, source: str, *args: Any, timeout: float = 15.0, what: str = "") -> Any:
        """Poll a page script until it returns something truthy; return that."""
        deadline = time.monotonic() + timeout
        while True:
            result = await self.script(source, *args)
            if result:
                return result
            if time.monotonic() > deadline:
                page = await self.script("return document.body.innerText")
                raise TimeoutError(f"{what or source} not true after {timeout}s; page:\n{page}")
            await asyncio.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the process group, SIGKILL whatever is left after `timeout` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
    # Children that ignored SIGTERM (or outlived their parent) go too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
