"""EBML walker and in-place patching (mmface4d_stream/k4a/ebml.py)."""

from __future__ import annotations

import io

import pytest

from mmface4d_stream.k4a import ebml


def _element(element_id: bytes, payload: bytes) -> bytes:
    assert len(payload) < 127
    return element_id + bytes([0x80 | len(payload)]) + payload


def _file(*children: bytes) -> io.BytesIO:
    header = _element(bytes.fromhex("1A45DFA3"), _element(bytes.fromhex("4282"), b"matroska"))
    body = b"".join(children)
    segment = bytes.fromhex("18538067") + bytes([0x01]) + len(body).to_bytes(7, "big") + body
    return io.BytesIO(header + segment)


def test_walk_and_patch_uint_keeping_length():
    info = _element(bytes.fromhex("1549A966"), _element(bytes.fromhex("2AD7B1"), (1_000_000).to_bytes(3, "big")))
    f = _file(info)
    top = ebml.read_tree(f)
    assert [e.id for e in top] == [ebml.EBML_HEADER, ebml.SEGMENT]
    scale = top[1].find(ebml.INFO).find(ebml.TIMESTAMP_SCALE)
    assert ebml.read_uint(f, scale) == 1_000_000 and scale.size == 3
    ebml.write_uint_in_place(f, scale, 1000)
    again = ebml.read_tree(f)[1].find(ebml.INFO).find(ebml.TIMESTAMP_SCALE)
    assert ebml.read_uint(f, again) == 1000 and again.size == 3  # leading zero byte kept
    with pytest.raises(ebml.EbmlError, match="does not fit"):
        ebml.write_uint_in_place(f, again, 1 << 24)


@pytest.mark.parametrize("payload_size", [0, 1, 5, 6, 7, 8, 40])
def test_void_in_place_keeps_the_tree_walkable(payload_size):
    tag = _element(bytes.fromhex("67C8"), _element(bytes.fromhex("45A3"), b"x" * payload_size))
    after = _element(bytes.fromhex("4487"), b"after")
    tags = _element(bytes.fromhex("1254C367"), _element(bytes.fromhex("7373"), tag + after))
    f = _file(tags)
    simple = ebml.read_tree(f)[1].find(ebml.TAGS).find(ebml.TAG).find(ebml.SIMPLE_TAG)
    ebml.void_in_place(f, simple)
    children = ebml.read_tree(f)[1].find(ebml.TAGS).find(ebml.TAG).children
    assert [c.id for c in children] == [ebml.VOID, ebml.TAG_STRING]
    assert ebml.read_string(f, children[1]) == "after"


def test_not_ebml():
    with pytest.raises(ebml.EbmlError, match="not an EBML file"):
        ebml.read_tree(io.BytesIO(b"RIFF....WAVEfmt "))
