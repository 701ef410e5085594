"""A minimal EBML (Matroska) element walker and in-place patcher.

FFmpeg's Matroska muxer cannot write some details of Azure Kinect recordings (a microsecond
`TimestampScale`, `b16g` BITMAPINFOHEADERs with a positive height). `MkvWriter` lets FFmpeg mux
the file and then rewrites those few bytes in place with the helpers here, which only ever
replace an element's payload by one of the same length. The walker is also what the tests use
to compare a written file's structure with a real recording, element by element.

Reference: the Matroska specification (IETF CELLAR, RFC 9559) for element IDs and the
variable-length integer coding.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO, Iterator

# Element IDs (with their length-marker bits, as they appear in the file).
EBML_HEADER = 0x1A45DFA3
SEGMENT = 0x18538067
SEEK_HEAD = 0x114D9B74
INFO = 0x1549A966
TIMESTAMP_SCALE = 0x2AD7B1
DURATION = 0x4489
TRACKS = 0x1654AE6B
TRACK_ENTRY = 0xAE
TRACK_NUMBER = 0xD7
TRACK_UID = 0x73C5
TRACK_TYPE = 0x83
TRACK_NAME = 0x536E
CODEC_ID = 0x86
CODEC_PRIVATE = 0x63A2
DEFAULT_DURATION = 0x23E383
VIDEO = 0xE0
PIXEL_WIDTH = 0xB0
PIXEL_HEIGHT = 0xBA
ATTACHMENTS = 0x1941A469
ATTACHED_FILE = 0x61A7
FILE_NAME = 0x466E
FILE_MIME_TYPE = 0x4660
FILE_DATA = 0x465C
FILE_UID = 0x46AE
TAGS = 0x1254C367
TAG = 0x7373
TARGETS = 0x63C0
TAG_TRACK_UID = 0x63C5
TAG_ATTACHMENT_UID = 0x63C6
SIMPLE_TAG = 0x67C8
TAG_NAME = 0x45A3
TAG_STRING = 0x4487
CLUSTER = 0x1F43B675
CLUSTER_TIMESTAMP = 0xE7
SIMPLE_BLOCK = 0xA3
BLOCK_GROUP = 0xA0
BLOCK = 0xA1
CUES = 0x1C53BB6B
VOID = 0xEC

#: Master elements the walker descends into; everything else is a leaf with a payload.
MASTER_IDS = frozenset({
    EBML_HEADER, SEGMENT, SEEK_HEAD, INFO, TRACKS, TRACK_ENTRY, VIDEO, ATTACHMENTS,
    ATTACHED_FILE, TAGS, TAG, TARGETS, SIMPLE_TAG, CLUSTER, BLOCK_GROUP, CUES,
})

_MAX_DEPTH = 8


class EbmlError(ValueError):
    """The bytes are not a well-formed EBML element tree."""


@dataclass
class Element:
    """One EBML element: `offset` of its ID, `data_offset`/`size` of its payload (bytes)."""

    id: int
    offset: int
    data_offset: int
    size: int
    children: list["Element"]

    @property
    def end(self) -> int:
        return self.data_offset + self.size

    def find(self, element_id: int) -> "Element | None":
        """First direct child with this ID, or None."""
        for child in self.children:
            if child.id == element_id:
                return child
        return None

    def find_all(self, element_id: int) -> list["Element"]:
        return [child for child in self.children if child.id == element_id]


def _read_vint(f: BinaryIO, keep_marker: bool) -> tuple[int, int] | None:
    """Read a variable-length integer; returns (value, length in bytes) or None at EOF."""
    first = f.read(1)
    if not first:
        return None
    b0 = first[0]
    if b0 == 0:
        raise EbmlError("invalid EBML variable-length integer (leading zero byte)")
    length = 8 - b0.bit_length() + 1
    rest = f.read(length - 1)
    if len(rest) != length - 1:
        raise EbmlError("file ends inside an EBML element header")
    value = b0 if keep_marker else b0 & ((1 << (8 - length)) - 1)
    all_ones = (not keep_marker) and value == (1 << (8 - length)) - 1
    for byte in rest:
        value = (value << 8) | byte
        all_ones = all_ones and byte == 0xFF
    if all_ones:
        return -1, length
    return value, length


def _walk(f: BinaryIO, start: int, end: int | None, depth: int, skip_clusters: bool) -> list[Element]:
    elements: list[Element] = []
    f.seek(start)
    pos = start
    while end is None or pos < end:
        f.seek(pos)
        id_ = _read_vint(f, keep_marker=True)
        if id_ is None:
            break
        size_ = _read_vint(f, keep_marker=False)
        if size_ is None:
            raise EbmlError("file ends inside an EBML element header")
        element_id, id_len = id_
        size, size_len = size_
        data_offset = pos + id_len + size_len
        if size < 0:  # unknown size (live streams): runs to the parent's end
            if end is None:
                f.seek(0, 2)
                size = f.tell() - data_offset
            else:
                size = end - data_offset
        element = Element(element_id, pos, data_offset, size, [])
        if element_id in MASTER_IDS and depth < _MAX_DEPTH and not (skip_clusters and element_id == CLUSTER):
            element.children = _walk(f, data_offset, data_offset + size, depth + 1, skip_clusters)
        elements.append(element)
        pos = data_offset + size
    return elements


def read_tree(f: BinaryIO, skip_clusters: bool = True) -> list[Element]:
    """Top-level elements of an EBML file (EBML header, Segment) with their children.

    Cluster contents are not descended into unless `skip_clusters=False` (they hold the frames).
    Raises `EbmlError` when the file does not start with an EBML header.
    """
    f.seek(0)
    magic = f.read(4)
    if len(magic) < 4 or struct.unpack(">I", magic)[0] != EBML_HEADER:
        raise EbmlError("not an EBML file (no EBML header)")
    return _walk(f, 0, None, 0, skip_clusters)


def read_top_level(f: BinaryIO) -> list[Element]:
    """Top-level elements only (EBML header, Segment), without descending: cheap on any size."""
    f.seek(0)
    magic = f.read(4)
    if len(magic) < 4 or struct.unpack(">I", magic)[0] != EBML_HEADER:
        raise EbmlError("not an EBML file (no EBML header)")
    return _walk(f, 0, None, _MAX_DEPTH, skip_clusters=True)


def read_children(f: BinaryIO, element: Element) -> list[Element]:
    """The element's children (descending into block groups), e.g. a Cluster's blocks."""
    return _walk(f, element.data_offset, element.end, 1, skip_clusters=False)


def read_payload(f: BinaryIO, element: Element) -> bytes:
    f.seek(element.data_offset)
    return f.read(element.size)


def read_uint(f: BinaryIO, element: Element) -> int:
    return int.from_bytes(read_payload(f, element), "big") if element.size else 0


def read_string(f: BinaryIO, element: Element) -> str:
    return read_payload(f, element).rstrip(b"\0").decode("utf-8", errors="replace")


def write_uint_in_place(f: BinaryIO, element: Element, value: int) -> None:
    """Overwrite an unsigned-integer element's payload, keeping its byte length (leading zeros)."""
    if value >= 1 << (8 * element.size):
        raise EbmlError(f"value {value} does not fit the element's {element.size} bytes")
    f.seek(element.data_offset)
    f.write(value.to_bytes(element.size, "big"))


def write_payload_in_place(f: BinaryIO, element: Element, payload: bytes) -> None:
    if len(payload) != element.size:
        raise EbmlError(f"replacement payload is {len(payload)} bytes, the element holds {element.size}")
    f.seek(element.data_offset)
    f.write(payload)


def void_in_place(f: BinaryIO, element: Element) -> None:
    """Turn an element (header included) into a Void element of the same total length."""
    total = element.end - element.offset
    if total < 2:
        raise EbmlError("element too short to void")
    # Void ID (1 byte) + an 8-byte size field covers any length >= 9; short ones use 1 byte.
    if total >= 9:
        size = total - 9
        header = bytes([VOID]) + bytes([0x01]) + size.to_bytes(7, "big")
    else:
        size = total - 2
        header = bytes([VOID, 0x80 | size])
    f.seek(element.offset)
    f.write(header + bytes(size))


def iter_elements(elements: list[Element]) -> Iterator[Element]:
    """Depth-first iteration over a tree."""
    for element in elements:
        yield element
        yield from iter_elements(element.children)
