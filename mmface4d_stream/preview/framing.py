"""The binary WebSocket framing between the preview server and its browser page.

Meshes are large (35,709 BFM vertices = 428 KB per frame at 30 frames/s) and are sent as binary
WebSocket messages, never as JSON. Every binary message starts with a little-endian header whose
first byte is the message type and second byte the framing version; payloads are 4-byte aligned
so the browser can view them as `Float32Array`/`Int32Array` without copying.

=========  =====================================================================================
type       layout (``<`` little-endian; offsets in bytes)
=========  =====================================================================================
MESH (1)   ``<BBHIIII`` type, version, flags, seq, frame, n_vertices, topology_key (20 bytes),
           then n_vertices × 3 float32 vertices, metres, in the reference camera's frame.
           flags: bit 0 smoothed, bit 1 face lost (the fitter carried the previous mesh over).
           seq: the preview's own counter of meshes it accepted (contiguous; the page counts
           skipped ones as meshes it did not draw). frame: the source frame index.
TOPOLOGY   ``<BBHIII`` type, version, 0, topology_key, n_vertices, n_faces (16 bytes), then
(2)        n_faces × 3 int32 vertex indices. topology_key is the server's small integer for a
           stream `topology_id`; a mesh is drawn only with the topology of the same key.
THUMBNAIL  ``<BBHII`` type, version, name_bytes, frame, jpeg_bytes (12 bytes), then the camera
(3)        name (UTF-8, zero-padded to a multiple of 4), then the JPEG.
=========  =====================================================================================

Status goes the other way round in size, so it is a JSON text message (``{"type": "status", ...}``,
see `server`). The page answers with JSON text messages: ``{"type": "ack", "n": k}`` after it has
drawn (or dropped in favour of a newer one) `k` meshes; the server keeps at most
`MESH_WINDOW` meshes unacknowledged per page, so a slow page never queues more than that.

The same constants are written out in ``web/static/preview.js``; a test checks they agree.
"""

from __future__ import annotations

import struct
from typing import NamedTuple, Union

import numpy as np

FRAMING_VERSION = 1

MSG_MESH = 1
MSG_TOPOLOGY = 2
MSG_THUMBNAIL = 3

FLAG_SMOOTHED = 1
FLAG_LOST = 2

_MESH_HEADER = struct.Struct("<BBHIIII")
_TOPOLOGY_HEADER = struct.Struct("<BBHIII")
_THUMBNAIL_HEADER = struct.Struct("<BBHII")

MESH_HEADER_BYTES = _MESH_HEADER.size  # 20
TOPOLOGY_HEADER_BYTES = _TOPOLOGY_HEADER.size  # 16
THUMBNAIL_HEADER_BYTES = _THUMBNAIL_HEADER.size  # 12

# Unacknowledged meshes per page: one being drawn, one on the way.
MESH_WINDOW = 2

_U32 = 1 << 32


class MeshFrame(NamedTuple):
    """A decoded MESH message; `vertices` float32 (N, 3) metres."""

    seq: int
    frame: int
    topology_key: int
    smoothed: bool
    lost: bool
    vertices: np.ndarray


class TopologyFrame(NamedTuple):
    """A decoded TOPOLOGY message; `faces` int32 (F, 3) indices into [0, n_vertices)."""

    topology_key: int
    n_vertices: int
    faces: np.ndarray


class ThumbnailFrame(NamedTuple):
    """A decoded THUMBNAIL message: one camera's JPEG preview of `frame`."""

    camera: str
    frame: int
    jpeg: bytes


Frame = Union[MeshFrame, TopologyFrame, ThumbnailFrame]


def _u32(value: int, what: str) -> int:
    value = int(value)
    if value < 0:
        raise ValueError(f"{what} must be >= 0, got {value}")
    return value % _U32


def encode_mesh_frame(
    vertices: np.ndarray, *, seq: int, frame: int, topology_key: int, smoothed: bool = False, lost: bool = False
) -> bytes:
    """MESH message for float (N, 3) `vertices` in metres; `seq` and `frame` wrap at 2**32."""
    vertices = np.asarray(vertices)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must have shape (N, 3), got {vertices.shape}")
    flags = (FLAG_SMOOTHED if smoothed else 0) | (FLAG_LOST if lost else 0)
    header = _MESH_HEADER.pack(
        MSG_MESH, FRAMING_VERSION, flags, _u32(seq, "seq"), _u32(frame, "frame"),
        vertices.shape[0], _u32(topology_key, "topology_key"),
    )
    return header + np.ascontiguousarray(vertices, dtype="<f4").tobytes()


def encode_topology_frame(faces: np.ndarray, *, n_vertices: int, topology_key: int) -> bytes:
    """TOPOLOGY message for int (F, 3) `faces` indexing [0, n_vertices)."""
    faces = np.asarray(faces)
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must have shape (F, 3), got {faces.shape}")
    header = _TOPOLOGY_HEADER.pack(
        MSG_TOPOLOGY, FRAMING_VERSION, 0, _u32(topology_key, "topology_key"), int(n_vertices), faces.shape[0]
    )
    return header + np.ascontiguousarray(faces, dtype="<i4").tobytes()


def encode_thumbnail_frame(camera: str, jpeg: bytes, *, frame: int) -> bytes:
    """THUMBNAIL message carrying one camera's JPEG bytes."""
    name = str(camera).encode("utf-8")
    if len(name) > 0xFFFF:
        raise ValueError(f"camera name is {len(name)} bytes, at most 65535 fit")
    padded = name + b"\0" * (-len(name) % 4)
    header = _THUMBNAIL_HEADER.pack(MSG_THUMBNAIL, FRAMING_VERSION, len(name), _u32(frame, "frame"), len(jpeg))
    return header + padded + bytes(jpeg)


def decode_frame(data: bytes) -> Frame:
    """The typed content of a binary message; raises ValueError when it is malformed.

    The server never receives these; the decoder documents the layout in executable form and
    lets tests read what the server sends.
    """
    data = bytes(data)
    if len(data) < 2:
        raise ValueError(f"binary message of {len(data)} bytes is shorter than any header")
    kind, version = data[0], data[1]
    if version != FRAMING_VERSION:
        raise ValueError(f"framing version {version}, expected {FRAMING_VERSION}")
    if kind == MSG_MESH:
        _check_length(data, MESH_HEADER_BYTES, "mesh")
        _, _, flags, seq, frame, n, key = _MESH_HEADER.unpack_from(data)
        _check_length(data, MESH_HEADER_BYTES + n * 12, "mesh", exact=True)
        vertices = np.frombuffer(data, dtype="<f4", offset=MESH_HEADER_BYTES).reshape(n, 3)
        return MeshFrame(seq, frame, key, bool(flags & FLAG_SMOOTHED), bool(flags & FLAG_LOST), vertices)
    if kind == MSG_TOPOLOGY:
        _check_length(data, TOPOLOGY_HEADER_BYTES, "topology")
        _, _, _, key, n_vertices, n_faces = _TOPOLOGY_HEADER.unpack_from(data)
        _check_length(data, TOPOLOGY_HEADER_BYTES + n_faces * 12, "topology", exact=True)
        faces = np.frombuffer(data, dtype="<i4", offset=TOPOLOGY_HEADER_BYTES).reshape(n_faces, 3)
        if faces.size and (faces.min() < 0 or faces.max() >= n_vertices):
            raise ValueError(f"topology face indices fall outside [0, {n_vertices})")
        return TopologyFrame(key, n_vertices, faces)
    if kind == MSG_THUMBNAIL:
        _check_length(data, THUMBNAIL_HEADER_BYTES, "thumbnail")
        _, _, name_bytes, frame, jpeg_bytes = _THUMBNAIL_HEADER.unpack_from(data)
        start = THUMBNAIL_HEADER_BYTES + name_bytes + (-name_bytes % 4)
        _check_length(data, start + jpeg_bytes, "thumbnail", exact=True)
        name = data[THUMBNAIL_HEADER_BYTES:THUMBNAIL_HEADER_BYTES + name_bytes].decode("utf-8")
        return ThumbnailFrame(name, frame, data[start:])
    raise ValueError(f"unknown binary message type {kind}")


def _check_length(data: bytes, expected: int, what: str, exact: bool = False) -> None:
    if len(data) < expected or (exact and len(data) != expected):
        raise ValueError(f"{what} message is {len(data)} bytes, expected {expected}")
