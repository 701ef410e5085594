"""Live policy: a recording paced at device rate, with a stage slowed down, drops and reports frames."""

from __future__ import annotations

import json

from graphs.config import load_config
from graphs.frame_graph import SequenceJob
from graphs.runner import run_jobs
from mmface4d_stream.formats.mesh_nut import MeshNutReader


def test_slow_fitter_drops_stale_frames_and_keeps_latency_bounded(graph_capture, tmp_path, local_ray):
    # The fitter sleeps 300 ms per frame: the graph takes far fewer frames than the replay delivers.
    config = load_config("live", {"publish.enabled": False, "faults.stage": "fitter", "faults.delay_ms": 300.0,
                                  "landmarks.thumbnails": False})
    save = tmp_path / "live"
    job = SequenceJob([str(graph_capture.mkv_paths[1])], str(save), "live")
    [result] = run_jobs([job], config, progress=False)
    assert result.ok, result.error
    meta = json.loads((tmp_path / "live_meta.json").read_text())
    dropped = meta["frames_dropped"]
    assert meta["policy"] == "live" and len(dropped) >= 4, meta
    # Every capture frame has a mesh in the file: dropped ones repeat the previous mesh.
    assert meta["frames_in"] == meta["frames_written"] == 12 and meta["frames"] + len(dropped) == 12
    with MeshNutReader(save) as reader:
        assert len(reader) == 12
    assert meta["source_frames_dropped"] >= 1
    # Bounded latency: at most max_inflight (2) frames wait in the graph, each ~0.3 s in the fitter (plus the first
    # frame's template build).
    assert meta["stage_latency_ms"]["end_to_end"]["p95"] < 4000, meta["stage_latency_ms"]
