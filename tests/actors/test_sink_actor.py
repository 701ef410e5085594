"""SinkActor (smoother, encoder and publisher in one actor) against the three actors it replaces."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from actors import Dropped, FrameReport, MeshPacket, NutActor, SmoothActor
from actors.sink_actor import SinkActor
from mmface4d_stream.pipeline.stage_config import SmoothStageConfig
from mmface4d_stream.frame_records import MeshFrame


def _packets() -> list:
    """Meshes with a dropped frame and a gap, the triangles on the first, then the end marker."""
    rng = np.random.default_rng(3)
    faces = np.array([[0, 1, 2], [3, 4, 5]], np.int32)
    meshes = [MeshFrame("s", f, f * 33_333_333, rng.normal(0.0, 0.01, (6, 3)).astype(np.float32), False)
              for f in (0, 1, 3, 4, 6)]
    packets = [MeshPacket(meshes[0], faces), MeshPacket(meshes[1]), Dropped("s", 2, "fitter", "late", "fitter_busy"),
               *[MeshPacket(m) for m in meshes[2:]], None]
    return packets


def test_sink_actor_writes_and_reports_what_smoother_and_encoder_actors_do(tmp_path):
    config = SmoothStageConfig()
    smoother, encoder = SmoothActor(config, 30.0), NutActor(str(tmp_path / "apart"))
    apart = [encoder.write(smoother.smooth(p)) for p in _packets()]
    sink = SinkActor({"smoother": ((config, 30.0), {}), "encoder": ((str(tmp_path / "fused"),), {})})
    fused = [sink.consume(p) for p in _packets()]
    assert [publish_ms for _, publish_ms in fused] == [None] * len(fused)  # no publisher part
    strip = lambda r: None if r is None else (r.kind, r.frame, r.filled, r.cause, {k for k in r.timings_ms})  # noqa: E731
    assert [strip(r) for r, _ in fused] == [strip(r) for r in apart]
    assert all(isinstance(r, FrameReport) for r, _ in fused[:-1])
    assert sink.call("encoder", "close", None, {"note": "t"}) == encoder.close(None, {"note": "t"})
    for suffix in ("_0.nut", "_1.nut", "_2.nut", "_faces.npy"):
        assert (tmp_path / f"fused{suffix}").read_bytes() == (tmp_path / f"apart{suffix}").read_bytes()
    assert sink.has("smoother") and not sink.has("publisher")


def test_sink_actor_needs_an_encoder_and_knows_only_its_parts(tmp_path):
    with pytest.raises(ValueError, match="encoder"):
        SinkActor({"smoother": ((), {})})
    with pytest.raises(ValueError, match="writer"):
        SinkActor({"encoder": ((str(tmp_path / "m"),), {}), "writer": ((), {})})


def test_sink_actor_publishes_a_mesh_before_encoding_it(tmp_path):
    """Capture → publish does not include the nut encoding: the publisher part has sent a mesh when
    the encoder part gets it (with separate actors both take it at once)."""
    sink = SinkActor({"encoder": ((str(tmp_path / "m"),), {}),
                      "publisher": (("tcp://127.0.0.1:*",), {"drop_when_full": True})})
    order = []
    for part, method in (("encoder", "write"), ("publisher", "publish")):
        target = sink.parts[part]
        original = getattr(target, method)
        setattr(target, method, lambda packet, name=part, call=original: (order.append(name), call(packet))[1])
    now = time.monotonic_ns()
    packets = [dataclasses.replace(p, mesh=dataclasses.replace(p.mesh, t_source_ns=now)) for p in _packets()[:2]]
    reports = [sink.consume(p) for p in packets]
    assert order == ["publisher", "encoder"] * 2
    assert [r.kind for r, _ in reports] == ["mesh", "mesh"]
    assert all(ms is not None and ms >= 0 for _, ms in reports)  # both meshes went out (the first carries the faces)
    sink.call("publisher", "close")
    sink.call("encoder", "close", None, {})
