"""A data set as a run of fragments for P-DATA-TF PDUs, without copying it where possible.

From memory: memoryview slices. From a file up to MAP_LIMIT: slices of a read-only mmap
(the page cache is the only copy). Larger files: read block by block into one reused
buffer, so memory stays flat for an instance of any size.
"""

from __future__ import annotations

import contextlib
import io
import mmap
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

#: Files up to this size are mapped whole; larger ones are read in blocks.
MAP_LIMIT = 16 * 1024 * 1024
#: About this much is read (and written to the socket) at a time from a large file.
BLOCK = 1024 * 1024


class Payload(Protocol):
    #: Bytes of the data set as sent (with any padding).
    length: int

    def blocks(self, fragment: int) -> Iterator[memoryview]:
        """Consecutive pieces, each a multiple of `fragment` bytes except the last; a piece
        is valid only until the next one is asked for."""
        ...


class MemoryPayload:
    def __init__(self, data: bytes | bytearray | memoryview, *, pad: bool = False) -> None:
        self._data = memoryview(data)
        self._pad = pad
        self.length = len(self._data) + (1 if pad else 0)

    def blocks(self, fragment: int) -> Iterator[memoryview]:
        if self._pad:
            yield memoryview(bytes(self._data) + b"\0")  # rare: odd-length deflated
        else:
            yield self._data


class FilePayload:
    """The bytes of `path` from `offset` on; `pad` adds one NULL (odd deflate streams)."""

    def __init__(self, path: Path, offset: int, *, pad: bool = False) -> None:
        self._path = path
        self._offset = offset
        self._pad = pad
        self._size = os.stat(path).st_size - offset
        self.length = self._size + (1 if pad else 0)

    def blocks(self, fragment: int) -> Iterator[memoryview]:
        with open(self._path, "rb") as file:
            if self._size <= MAP_LIMIT and not self._pad and self._size > 0:
                yield from self._mapped(file)
            else:
                yield from self._read(file, fragment)

    def _mapped(self, file: io.BufferedReader) -> Iterator[memoryview]:
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            with memoryview(mapped) as view:
                yield view[self._offset :]
        finally:
            # A slice still held by a failed send keeps the map: the GC closes it then.
            with contextlib.suppress(BufferError):
                mapped.close()

    def _read(self, file: io.BufferedReader, fragment: int) -> Iterator[memoryview]:
        size = max(fragment, BLOCK // fragment * fragment)
        view = memoryview(bytearray(size))
        file.seek(self._offset)
        left = self._size
        while left > 0:
            want = min(size, left)
            got = 0
            while got < want:  # a block is whole fragments: fill it
                read = file.readinto(view[got:want])
                if not read:
                    raise OSError(f"{self._path} ended {left - got} bytes early")
                got += read
            left -= got
            if left == 0 and self._pad:
                yield memoryview(bytes(view[:got]) + b"\0")
            else:
                yield view[:got]
