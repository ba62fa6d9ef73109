"""A private Orthanc server per test: own config, ports, storage and log in a temp dir.

Debian's Orthanc 1.10 has no bind-address option (it listens on 0.0.0.0), so the config keeps
RemoteAccessAllowed false and the ports are free loopback ports. TCP_NODELAY=1 is set in its
environment because DCMTK (Orthanc's DICOM layer) leaves Nagle's algorithm on otherwise, and
every C-STORE on a reused association then waits ~40 ms for a delayed ACK.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support.ports import free_port
from tests.support.processes import terminate

ORTHANC_BIN = os.environ.get("SQ_TEST_ORTHANC_BIN", "/usr/sbin/Orthanc")
DEFAULT_USERS = {"sq": "sq-pass"}


def orthanc_available() -> bool:
    return os.access(ORTHANC_BIN, os.X_OK)


def dicomweb_plugin_path() -> str | None:
    """Path of the DICOMweb plugin of the Debian package orthanc-dicomweb, or None."""
    try:
        files = subprocess.run(
            ["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        files = glob.glob("/usr/share/orthanc/plugins/*DicomWeb*")
    # The package ships the real .so under /usr/lib/orthanc and a symlink in plugins/.
    plugins = [f for f in files if "DicomWeb" in f and f.endswith(".so")]
    return plugins[0] if plugins else None


class OrthancProcess:
    """Start with `with OrthancProcess() as orthanc:`; stop()/start() simulate an outage
    (same ports and storage), kill() a crash; leaving the block kills the process and
    removes its directory."""

    def __init__(
        self,
        *,
        aet: str = "ORTHANC",
        users: dict[str, str] | None = None,
        stable_age: int = 2,
        plugins: list[str] | None = None,
        extra_config: dict[str, Any] | None = None,
        start_timeout: float = 20.0,
    ) -> None:
        self.aet = aet
        self.users = dict(DEFAULT_USERS if users is None else users)
        self.stable_age = stable_age
        self.plugins = list(plugins or [])
        self.extra_config = dict(extra_config or {})
        self.start_timeout = start_timeout
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="sq-orthanc-"))
        self.config_path = self.workdir / "orthanc.json"
        self.log_path = self.workdir / "orthanc.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # -- identity -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def username(self) -> str:
        return next(iter(self.users))

    @property
    def password(self) -> str:
        return self.users[self.username]

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    # -- life cycle ---------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "Name": f"sq-test-{self.aet}",
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": self.users,
            # Otherwise Orthanc gzips every file it serves to a client that accepts gzip.
            "HttpCompressionEnabled": False,
            # Files are read from the storage every time (lose_file() must take effect).
            "MaximumStorageCacheSize": 0,
            "StableAge": self.stable_age,
            "Plugins": self.plugins,
            # Jobs of a previous run of the same storage must not come back after a restart.
            "SaveJobs": False,
        }
        config.update(self.extra_config)
        return config

    def start(self) -> OrthancProcess:
        if self._proc is not None:
            raise RuntimeError("Orthanc already running")
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        env = dict(os.environ, TCP_NODELAY="1")
        self._proc = subprocess.Popen(
            [ORTHANC_BIN, "--no-jobs", f"--logfile={self.log_path}", str(self.config_path)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited ({self._proc.returncode}): {self.log_tail()}")
            with contextlib.suppress(OSError):
                self.get_json("/system", timeout=1.0)
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"Orthanc not ready after {self.start_timeout} s")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the process by PID: SIGTERM, then SIGKILL after timeout seconds."""
        proc, self._proc = self._proc, None
        terminate(proc, timeout)

    def kill(self) -> None:
        """SIGKILL: a crash. Also the fast way out when the data is thrown away anyway, as
        a clean stop takes Orthanc 1.10 ~3.5 s (its HTTP and DICOM loops poll for it)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    def reset_database(self) -> None:
        """Restart on an empty storage and index (same ports): a reinstalled or replaced
        Orthanc, whose change log starts again at 1."""
        self.kill()
        for name in ("storage", "index"):
            shutil.rmtree(self.workdir / name, ignore_errors=True)
        self.start()

    def close(self) -> None:
        """Kill the process and remove the temp dir (config, storage, index, log)."""
        self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> OrthancProcess:
        try:
            return self.start()
        except BaseException:
            self.close()  # __exit__ will not run: remove the temp dir here
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- REST ---------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> bytes:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        req.add_header("Accept-Encoding", "identity")
        if body is not None:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data: bytes = resp.read()
        return data

    def get_json(self, path: str, timeout: float = 30.0) -> Any:
        return json.loads(self.request("GET", path, timeout=timeout))

    def post_json(self, path: str, payload: Any, timeout: float = 30.0) -> Any:
        raw = self.request("POST", path, json.dumps(payload).encode(), timeout=timeout)
        return json.loads(raw) if raw else None

    def upload(self, data: bytes) -> str:
        """POST a Part-10 file; returns the Orthanc instance id."""
        answer = json.loads(self.request("POST", "/instances", data, "application/dicom"))
        return str(answer["ID"])

    def delete_instance(self, instance_id: str) -> None:
        self.request("DELETE", f"/instances/{instance_id}")

    def lose_file(self, instance_id: str) -> None:
        """Remove the instance's file from the storage, as a damaged disk would: Orthanc
        still lists the instance but answers HTTP 500 for its file and tags."""
        uuid = self.get_json(f"/instances/{instance_id}")["FileUuid"]
        (self.workdir / "storage" / uuid[:2] / uuid[2:4] / uuid).unlink()

    def instances(self) -> list[str]:
        return list(self.get_json("/instances"))

    def instance_tags(self, instance_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.get_json(f"/instances/{instance_id}/simplified-tags")
        return result

    def download(self, instance_id: str) -> bytes:
        return self.request("GET", f"/instances/{instance_id}/file")

    def changes(self, since: int = 0, limit: int = 1000) -> dict[str, Any]:
        result: dict[str, Any] = self.get_json(f"/changes?since={since}&limit={limit}")
        return result

    def put_modality(self, name: str, aet: str, port: int, host: str = "127.0.0.1") -> None:
        """Declare a DICOM peer at run time (kept in memory by Orthanc 1.10)."""
        body = json.dumps({"AET": aet, "Host": host, "Port": port}).encode()
        self.request("PUT", f"/modalities/{name}", body)

    def wait_instances(self, count: int, timeout: float = 30.0) -> list[str]:
        """Wait until Orthanc holds at least count instances (e.g. received by C-STORE)."""
        deadline = time.monotonic() + timeout
        while len(ids := self.instances()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"Orthanc has {len(ids)} instances, wanted {count}")
            time.sleep(0.1)
        return ids


def http_error_body(exc: urllib.error.HTTPError) -> str:
    """Orthanc explains errors in a JSON body: handy in assertion messages."""
    try:
        return exc.read().decode(errors="replace")
    except OSError:
        return ""
