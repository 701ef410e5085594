"""Wire schema: every message type round-trips; malformed messages raise WireFormatError."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from mmface4d_stream.stream import schema
from mmface4d_stream.stream.schema import (
    EndMessage,
    MeshMessage,
    StageStatus,
    StatusMessage,
    Thumbnail,
    TopologyMessage,
    WireFormatError,
    decode,
    encode,
)


def _mesh(n: int = 50, **kw) -> MeshMessage:
    rng = np.random.default_rng(0)
    fields = dict(
        seq=7, frame=41, t_capture_ns=1_700_000_000_000_000_000, t_publish_ns=1_700_000_000_020_000_000,
        vertices=rng.normal(size=(n, 3)).astype(np.float32) * 0.1, topology_id="bfm-front",
        smoothed=True, cameras=("cam0", "cam1"), fit={"iterations": 3, "cost": 0.25, "converged": True},
    )
    fields.update(kw)
    return MeshMessage(**fields)


def _header(parts) -> dict:
    return msgpack.unpackb(parts[1], raw=False)


def _with_header(parts, **changes) -> list[bytes]:
    header = _header(parts)
    header.update(changes)
    return [parts[0], msgpack.packb(header, use_bin_type=True), *parts[2:]]


def _without(parts, key: str) -> list[bytes]:
    header = {k: v for k, v in _header(parts).items() if k != key}
    return [parts[0], msgpack.packb(header, use_bin_type=True), *parts[2:]]


def test_mesh_round_trip_keeps_every_field():
    message = _mesh()
    parts = encode(message)
    assert parts[0] == b"mesh" and len(parts) == 3
    assert len(parts[2]) == 50 * 3 * 4
    header = _header(parts)
    assert header["schema"] == "mmface4d.mesh/1"
    assert header["dtype"] == "<f4" and header["n_vertices"] == 50
    decoded = decode(parts)
    assert isinstance(decoded, MeshMessage)
    np.testing.assert_array_equal(decoded.vertices, message.vertices)
    assert decoded.vertices.dtype == np.float32 and decoded.vertices.shape == (50, 3)
    for name in ("seq", "frame", "t_capture_ns", "t_publish_ns", "topology_id", "smoothed", "cameras"):
        assert getattr(decoded, name) == getattr(message, name), name
    assert decoded.fit == {"iterations": 3, "cost": 0.25, "converged": True}


def test_float64_vertices_are_sent_as_float32_and_numpy_fit_values_become_plain():
    vertices = np.arange(12, dtype=np.float64).reshape(4, 3) / 7
    decoded = decode(encode(_mesh(vertices=vertices, fit={"rmse": np.float32(0.5), "per_cam": np.arange(3)})))
    np.testing.assert_array_equal(decoded.vertices, vertices.astype(np.float32))
    assert decoded.fit == {"rmse": 0.5, "per_cam": [0, 1, 2]}


def test_mesh_with_thumbnails_round_trips():
    thumbs = (Thumbnail("cam0", b"\xff\xd8jpeg0\xff\xd9", 64, 48), Thumbnail("cam2", b"\xff\xd8j2\xff\xd9", 32, 24))
    parts = encode(_mesh(thumbnails=thumbs))
    assert len(parts) == 5 and parts[3] == thumbs[0].jpeg
    decoded = decode(parts)
    assert decoded.thumbnails == thumbs
    with pytest.raises(WireFormatError, match="parts"):
        decode(parts[:4])
    with pytest.raises(WireFormatError, match="bytes"):
        decode(parts[:3] + [b"short", parts[4]])


def test_topology_round_trip():
    faces = np.array([[0, 1, 2], [2, 3, 0], [4, 5, 6]], dtype=np.int64)
    parts = encode(TopologyMessage("t1", 7, faces))
    assert _header(parts) == {
        "schema": "mmface4d.topology/1", "topology_id": "t1", "n_vertices": 7, "n_faces": 3, "dtype": "<i4"
    }
    decoded = decode(parts)
    assert decoded.topology_id == "t1" and decoded.n_vertices == 7 and decoded.n_faces == 3
    assert decoded.faces.dtype == np.int32
    np.testing.assert_array_equal(decoded.faces, faces)


def test_status_and_end_round_trip():
    status = StatusMessage(seq=2, t_publish_ns=123, stages={
        "fitter": StageStatus(fps=29.5, latency_ms=31.0, drops=4), "source:cam0": StageStatus(30.0, 1.5, 0)
    })
    assert decode(encode(status)) == status
    end = EndMessage(t_publish_ns=456, last_seq=66, n_meshes=67, reason="finished")
    assert decode(encode(end)) == end


def test_unknown_header_keys_are_ignored_for_forward_compatibility():
    parts = _with_header(encode(_mesh()), added_in_a_later_version={"x": 1})
    assert decode(parts).seq == 7


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda p: _with_header(p, schema="mmface4d.mesh/2"), "schema"),
        (lambda p: _with_header(p, dtype="<f8"), "dtype"),
        (lambda p: _with_header(p, n_vertices=51), "payload"),
        (lambda p: [p[0], p[1], p[2][:-4]], "payload"),
        (lambda p: [p[0], b"\xc1garbage", p[2]], "msgpack"),
        (lambda p: [p[0], msgpack.packb([1, 2, 3]), p[2]], "map"),
        (lambda p: p[:2], "parts"),
        (lambda p: p + [b"extra"], "parts"),
        (lambda p: [b"meshes", *p[1:]], "topic"),
        (lambda p: _with_header(p, seq="7"), "seq"),
        (lambda p: _with_header(p, seq=-1), "seq"),
        (lambda p: _with_header(p, smoothed=1), "smoothed"),
        (lambda p: _with_header(p, frame=True), "frame"),
        (lambda p: _with_header(p, cameras=["cam0", 3]), "cameras"),
        (lambda p: _with_header(p, fit=[1, 2]), "fit"),
        (lambda p: _without(p, "topology_id"), "topology_id"),
    ],
)
def test_malformed_mesh_is_rejected(mutate, match):
    with pytest.raises(WireFormatError, match=match):
        decode(mutate(encode(_mesh())))


def test_malformed_topology_status_end_are_rejected():
    topo = encode(TopologyMessage("t", 3, np.array([[0, 1, 2]])))
    with pytest.raises(WireFormatError, match="outside"):
        decode(_with_header(topo, n_vertices=2))
    with pytest.raises(WireFormatError, match="dtype"):
        decode(_with_header(topo, dtype="<i8"))
    status = encode(StatusMessage(0, 1, {"a": StageStatus(1.0, 2.0, 0)}))
    with pytest.raises(WireFormatError, match="drops"):
        decode(_with_header(status, stages={"a": {"fps": 1.0, "latency_ms": 2.0}}))
    with pytest.raises(WireFormatError, match="finite"):
        decode(_with_header(status, stages={"a": {"fps": float("nan"), "latency_ms": 2.0, "drops": 0}}))
    with pytest.raises(WireFormatError, match="empty"):
        decode([b"end", encode(EndMessage(1, 0, 1))[1], b"x"])
    with pytest.raises(WireFormatError, match="schema"):
        decode([b"end", status[1], b""])


def test_oversized_header_is_rejected_before_unpacking():
    parts = encode(_mesh())
    with pytest.raises(WireFormatError, match="exceeds"):
        decode([parts[0], b"\x00" * (schema.MAX_HEADER_BYTES + 1), parts[2]])


def test_encode_checks_its_inputs():
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        encode(_mesh(vertices=np.zeros((4, 2), np.float32)))
    with pytest.raises(ValueError, match="floating"):
        encode(_mesh(vertices=np.zeros((4, 3), np.int32)))
    with pytest.raises(ValueError, match="indices"):
        encode(TopologyMessage("t", 3, np.array([[0, 1, 3]])))
    with pytest.raises(ValueError, match="cannot carry"):
        encode(_mesh(fit={"obj": object()}))
