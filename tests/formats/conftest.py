"""Shared helpers of the format tests."""

from __future__ import annotations

from pathlib import Path

import av
import pytest


def flip_byte_in_packet(path: Path, index: int, xor: int = 0x81) -> None:
    """Damage packet `index` of a video file: one byte in the middle of its payload (not in the
    container's framing) is XORed with `xor`, in place."""
    with av.open(str(path)) as container:
        packets = [p for p in container.demux(container.streams.video[0]) if p.size]
        payload, pos = bytes(packets[index]), packets[index].pos
    raw = bytearray(Path(path).read_bytes())
    at = raw.find(payload, pos)
    assert at >= 0, f"packet {index} not found in {path}"
    raw[at + len(payload) // 2] ^= xor
    Path(path).write_bytes(bytes(raw))


@pytest.fixture
def flip_in_packet():
    """`flip_byte_in_packet`, for tests that damage a file."""
    return flip_byte_in_packet
