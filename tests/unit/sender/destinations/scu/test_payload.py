"""A data set cut into fragments: whole, mapped, or read in blocks; padded when asked."""

from __future__ import annotations

import os

import pytest

from sendqueue.services.sender.destinations.scu import payload
from sendqueue.services.sender.destinations.scu.payload import FilePayload, MemoryPayload


def _joined(source, fragment: int) -> tuple[bytes, list[int]]:
    sizes, out = [], b""
    for block in source.blocks(fragment):
        sizes.append(len(block))
        out += bytes(block)
    return out, sizes


@pytest.mark.parametrize("map_limit", [1 << 30, 0], ids=["mapped", "blocks"])
@pytest.mark.parametrize("pad", [False, True])
def test_a_file_payload_is_the_file_after_the_offset(tmp_path, monkeypatch, map_limit, pad):
    monkeypatch.setattr(payload, "MAP_LIMIT", map_limit)
    monkeypatch.setattr(payload, "BLOCK", 64 * 1024)
    data = os.urandom(300_001)
    path = tmp_path / "x.dcm"
    path.write_bytes(data)
    source = FilePayload(path, 1000, pad=pad)
    got, sizes = _joined(source, 16376)
    assert got == data[1000:] + (b"\0" if pad else b"")
    assert source.length == len(got)
    # every block but the last is whole fragments: no short PDU in the middle
    assert all(size % 16376 == 0 for size in sizes[:-1])


def test_a_memory_payload_is_one_block():
    got, sizes = _joined(MemoryPayload(b"abc", pad=True), 16)
    assert (got, sizes) == (b"abc\0", [4])
