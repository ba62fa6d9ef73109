"""Tests that disturb the machine's RabbitMQ (stop_app, a memory or disk alarm) must never
run while another test uses it, in this pytest process or in any other on the machine.

Every test that uses the broker holds a shared flock for its duration (the `rabbit_vhost`
fixture takes it); a disturbing test converts it to an exclusive one (`disturbing_broker`),
so it waits until every other user is done, and the others wait until it has restored the
broker. A turnstile lock keeps a waiting disturber from being starved by a stream of new
shared holders. Locks die with their process, so a killed run never leaves one behind.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

_DIR = os.environ.get("SQ_TEST_LOCK_DIR", "/tmp")
_MAIN = os.path.join(_DIR, "sendqueue-test-broker.lock")
_TURNSTILE = os.path.join(_DIR, "sendqueue-test-broker.turnstile")

_fd: int | None = None
_holders = 0


def _open(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)


def _lock(fd: int, mode: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: the broker stayed in use by others") from None
            time.sleep(0.05)


@contextmanager
def using_broker(timeout: float = 600.0) -> Iterator[None]:
    """Shared use of the machine's broker (re-entrant within one process)."""
    global _fd, _holders
    if _holders == 0:
        turnstile = _open(_TURNSTILE)
        try:
            _lock(turnstile, fcntl.LOCK_EX, timeout, "waiting at the turnstile")
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        finally:
            os.close(turnstile)
        _fd = _open(_MAIN)
        _lock(_fd, fcntl.LOCK_SH, timeout, "shared use")
    _holders += 1
    try:
        yield
    finally:
        _holders -= 1
        if _holders == 0 and _fd is not None:
            os.close(_fd)
            _fd = None


@contextmanager
def disturbing_broker(timeout: float = 600.0) -> Iterator[None]:
    """Exclusive use: the block may stop the broker or raise an alarm (and must restore
    it in a `finally`). Callers may already hold the shared lock (their vhost)."""
    with using_broker(timeout):
        assert _fd is not None
        turnstile = _open(_TURNSTILE)
        try:
            _lock(turnstile, fcntl.LOCK_EX, timeout, "taking the turnstile")
            _lock(_fd, fcntl.LOCK_EX, timeout, "exclusive use")
            try:
                yield
            finally:
                fcntl.flock(_fd, fcntl.LOCK_SH)
        finally:
            os.close(turnstile)
