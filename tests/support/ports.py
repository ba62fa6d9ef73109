"""Free TCP ports on loopback."""

from __future__ import annotations

import socket
import time


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now.

    The port is released before returning, so another process could take it in between; the
    window is tiny on a test machine. Orthanc and storescp bind 0.0.0.0, and a port free on
    127.0.0.1 is free there too (nothing else here listens on other addresses).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(port: int, timeout: float, host: str = "127.0.0.1") -> None:
    """Wait until host:port accepts connections; TimeoutError after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not port_open(port, host):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")
        time.sleep(0.05)
