"""The preview's binary WebSocket framing, and its JavaScript copy."""

from __future__ import annotations

import re

import numpy as np
import pytest

from mmface4d_stream.preview import framing
from mmface4d_stream.preview.assets import STATIC_DIR


def test_mesh_frame_round_trip_is_bit_exact():
    rng = np.random.default_rng(0)
    vertices = rng.normal(0, 0.1, (35709, 3)).astype(np.float32)
    data = framing.encode_mesh_frame(vertices, seq=7, frame=66, topology_key=3, smoothed=True, lost=True)
    assert len(data) == 20 + 35709 * 12
    assert data[:2] == bytes([framing.MSG_MESH, framing.FRAMING_VERSION])
    decoded = framing.decode_frame(data)
    assert (decoded.seq, decoded.frame, decoded.topology_key) == (7, 66, 3)
    assert decoded.smoothed and decoded.lost
    assert decoded.vertices.dtype == np.float32
    np.testing.assert_array_equal(decoded.vertices, vertices)


def test_mesh_frame_flags_and_wrapping_counters():
    vertices = np.zeros((4, 3), np.float64)
    decoded = framing.decode_frame(framing.encode_mesh_frame(vertices, seq=2**32 + 5, frame=1, topology_key=1))
    assert decoded.seq == 5
    assert not decoded.smoothed and not decoded.lost
    assert decoded.vertices.shape == (4, 3)


def test_topology_frame_round_trip(mmface4d_sample_dir):
    faces = np.load(mmface4d_sample_dir / "bfm_faces.npy")
    data = framing.encode_topology_frame(faces, n_vertices=35709, topology_key=2)
    assert len(data) == 16 + 70789 * 12
    decoded = framing.decode_frame(data)
    assert (decoded.topology_key, decoded.n_vertices) == (2, 35709)
    np.testing.assert_array_equal(decoded.faces, faces)


def test_thumbnail_frame_pads_the_name_to_four_bytes():
    jpeg = b"\xff\xd8" + bytes(range(50)) + b"\xff\xd9"
    data = framing.encode_thumbnail_frame("cam-é", jpeg, frame=12)
    name_bytes = len("cam-é".encode())
    assert (framing.THUMBNAIL_HEADER_BYTES + name_bytes + (-name_bytes % 4)) % 4 == 0
    decoded = framing.decode_frame(data)
    assert decoded == framing.ThumbnailFrame("cam-é", 12, jpeg)


def _with_n_vertices(topology_message: bytes, n_vertices: int) -> bytes:
    return topology_message[:8] + n_vertices.to_bytes(4, "little") + topology_message[12:]


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x01", "shorter than any header"),
        (bytes([framing.MSG_MESH, 9]) + bytes(18), "framing version 9"),
        (bytes([42, framing.FRAMING_VERSION]) + bytes(18), "unknown binary message type 42"),
        (framing.encode_mesh_frame(np.zeros((3, 3)), seq=1, frame=0, topology_key=1)[:-4], "expected 56"),
        (framing.encode_topology_frame(np.array([[0, 1, 2]]), n_vertices=3, topology_key=1)[:10], "expected 16"),
        (_with_n_vertices(framing.encode_topology_frame(np.array([[0, 1, 2]]), n_vertices=3, topology_key=1), 2),
         "outside [0, 2)"),
    ],
    ids=["empty", "version", "type", "short-mesh", "short-topology", "index-range"],
)
def test_decode_rejects_malformed_messages(data, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        framing.decode_frame(data)


def test_encoders_check_shapes():
    with pytest.raises(ValueError, match=r"vertices must have shape \(N, 3\)"):
        framing.encode_mesh_frame(np.zeros((4, 2)), seq=1, frame=0, topology_key=1)
    with pytest.raises(ValueError, match=r"faces must have shape \(F, 3\)"):
        framing.encode_topology_frame(np.zeros(9, int), n_vertices=3, topology_key=1)
    with pytest.raises(ValueError, match="seq must be >= 0"):
        framing.encode_mesh_frame(np.zeros((1, 3)), seq=-1, frame=0, topology_key=1)


def test_page_script_uses_the_same_constants():
    """preview.js repeats the framing numbers: they must agree with framing.py."""
    script = (STATIC_DIR / "preview.js").read_text()
    constants = dict(re.findall(r"^const ([A-Z_]+) = (\d+);", script, flags=re.MULTILINE))
    for name in ("FRAMING_VERSION", "MSG_MESH", "MSG_TOPOLOGY", "MSG_THUMBNAIL", "FLAG_SMOOTHED", "FLAG_LOST",
                 "MESH_HEADER_BYTES", "TOPOLOGY_HEADER_BYTES", "THUMBNAIL_HEADER_BYTES"):
        assert int(constants[name]) == getattr(framing, name), name
