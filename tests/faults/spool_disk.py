"""A spool directory on a small tmpfs of its own, that a scenario can fill to the brim.

Mounting needs root (the CI machine runs as root); the tmpfs is unmounted in a finally, and
nothing outside it is ever filled: the machine's disk is shared with other work.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def can_mount() -> str | None:
    """None if a tmpfs can be mounted here, else why not."""
    if os.geteuid() != 0:
        return "mounting a tmpfs for the spool needs root"
    if not Path("/bin/mount").exists() and not Path("/usr/bin/mount").exists():
        return "mount(8) is not installed"
    return None


@contextmanager
def small_tmpfs(path: Path, size: str = "8m") -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    try:
        yield path
    finally:
        result = subprocess.run(["umount", str(path)], capture_output=True, timeout=30)
        if result.returncode != 0:  # still busy (a process in it): detach it anyway
            subprocess.run(["umount", "-l", str(path)], check=True, timeout=30)


@contextmanager
def filled(path: Path) -> Iterator[int]:
    """Fill the file system of `path` until ENOSPC; the filler is removed after."""
    filler = path / "filler"
    written = 0
    try:
        with open(filler, "wb", buffering=0) as out:
            for block in (b"\0" * 65536, b"\0"):  # then the last partial block
                try:
                    while True:
                        written += out.write(block) or 0
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
        yield written
    finally:
        filler.unlink(missing_ok=True)
