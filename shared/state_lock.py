"""One process per state directory: ingest and retry own the files in their `state_dir`.

Two ingest processes on one cursor would each resend what the other sent; two retry
services on one parked index would run bulk passes against each other. The lock is an
flock on `<state_dir>/<service>.lock`: the kernel drops it when the process dies, even by
kill -9, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from sendqueue.shared.errors import ConfigError


@contextlib.contextmanager
def hold_state_dir(state_dir: str | Path, service: str) -> Iterator[None]:
    """Held for the service's lifetime; ConfigError if another process holds it."""
    path = Path(state_dir) / f"{service}.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigError(f"[{service}] state_dir {state_dir}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise ConfigError(
                f"[{service}] state_dir {state_dir} is in use by another {service} process"
                f" (pid {holder}); run one {service} per state_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
