"""A PostgreSQL server of a test's own: its own data dir and port on loopback, stopped by PID.

PostgreSQL refuses to run as root: the server runs as the `postgres` user of Debian's
package (the data directory is made theirs), started directly by Popen so its PID is the
postmaster's.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.ports import free_port
from tests.support.processes import terminate

USER = "postgres"


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else None


def orthanc_postgresql_plugin() -> str | None:
    found = glob.glob("/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so")
    return found[0] if found else None


def postgres_available() -> bool:
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return False
    return all(_bin(name) for name in ("initdb", "postgres", "pg_isready", "createdb"))


class PostgresProcess:
    def __init__(self) -> None:
        # Not under pytest's tmp_path: the postgres user must reach it (mkdtemp is 0700).
        self.dir = Path(tempfile.mkdtemp(prefix="sq-postgres-"))
        self.port = free_port()
        self.database = "orthanc"
        self._proc: subprocess.Popen[bytes] | None = None

    def _as_postgres(self, *command: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(command),
            user=USER,
            group=USER,
            extra_groups=[],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
            cwd=self.dir,
            **kwargs,  # type: ignore[call-overload]
        )

    def start(self, timeout: float = 60.0) -> PostgresProcess:
        entry = pwd.getpwnam(USER)
        os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        data = self.dir / "data"
        initdb = _bin("initdb")
        assert initdb is not None
        self._as_postgres(initdb, "-D", str(data), "-A", "trust", "-U", USER, "--no-sync")
        postgres = _bin("postgres")
        assert postgres is not None
        log = open(self.dir / "postgres.log", "ab")  # noqa: SIM115 - owned by the process
        self._proc = subprocess.Popen(
            [
                postgres,
                "-D",
                str(data),
                "-p",
                str(self.port),
                "-k",
                str(self.dir),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ],
            user=USER,
            group=USER,
            extra_groups=[],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
        )
        self._wait_ready(timeout)
        createdb = _bin("createdb")
        assert createdb is not None
        self._as_postgres(
            createdb, "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, self.database
        )
        return self

    def _wait_ready(self, timeout: float) -> None:
        ready = _bin("pg_isready")
        assert ready is not None
        deadline = time.monotonic() + timeout
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log_tail()}")
            done = subprocess.run(
                [ready, "-h", "127.0.0.1", "-p", str(self.port)], capture_output=True
            )
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"postgres not ready after {timeout}s: {self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, lines: int = 30) -> str:
        path = self.dir / "postgres.log"
        return "\n".join(path.read_text().splitlines()[-lines:]) if path.exists() else ""

    def orthanc_config(self) -> dict[str, object]:
        """Orthanc's `PostgreSQL` section: its index in this server."""
        return {
            "PostgreSQL": {
                "EnableIndex": True,
                "EnableStorage": False,
                "Host": "127.0.0.1",
                "Port": self.port,
                "Database": self.database,
                "Username": USER,
                "Password": "",
                "Lock": False,
            }
        }

    def stop(self) -> None:
        """SIGTERM is PostgreSQL's "smart" shutdown; SIGINT would be "fast". By PID."""
        terminate(self._proc, timeout=30)
        self._proc = None

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
