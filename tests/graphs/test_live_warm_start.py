"""The live path warm before the clock: no frame set is lost to the start-up, every drop has a cause."""

from __future__ import annotations

import json

import numpy as np

from graphs.config import load_config
from graphs.frame_graph import SequenceJob
from graphs.runner import run_jobs
from mmface4d_stream.fit.rig import CameraExtrinsics, RigCalibration


def _ground_truth_rig(capture, path) -> str:
    """The synthetic rig's true extrinsics as a rig file (what `mmface4d calibrate` writes)."""
    devices = json.loads(capture.cameras_path.read_text())["devices"]
    RigCalibration([CameraExtrinsics(d["serial_number"], np.asarray(d["T_ref_from_color"])) for d in devices],
                   reference=0).save(path)
    return str(path)


def test_warm_graph_with_a_rig_file_loses_no_frame_to_the_start_up(graph_capture, tmp_path, local_ray):
    ready = []
    rig = _ground_truth_rig(graph_capture, tmp_path / "rig.json")
    # A budget this shared 2-core machine keeps under any load: the test is about the start, not the
    # rate. Every frame counts as late for the fitter's hurry: every other one is fitted the fast way.
    config = load_config("live", {"publish.enabled": False, "landmarks.thumbnails": False, "fitter.rig": rig,
                                  "policy.max_latency_ms": 3000.0, "policy.hurry_after_ms": 0.001})
    job = SequenceJob([str(p) for p in graph_capture.mkv_paths], str(tmp_path / "live"), "live")
    [result] = run_jobs([job], config, progress=False, on_ready=ready.append)
    assert result.ok, result.error
    meta = json.loads((tmp_path / "live_meta.json").read_text())
    startup = meta["startup"]
    # Warm before the clock: the rig came from the file, the pre-roll found the face, `on_ready` was told.
    assert startup["rig"] == {"rig": "file", "seconds": None}
    assert startup["warm_up"]["preroll"] and startup["warm_up"]["face_found"]
    assert ready and ready[0]["name"] == "live" and ready[0]["ready_s"] == startup["ready_s"]
    # The first frame set after the clock started is fitted: nothing was dropped for the start-up.
    assert meta["frames_in"] == 12 and 0 not in meta["frames_dropped"] and meta["frames_fitted"] >= 2
    assert meta["frames_fitted"] + len(meta["frames_dropped"]) == 12
    # Warm-started from the pre-roll's fit, even the first frame can be hurried; never two in a row.
    fitted = meta["frames_fitted"]
    assert meta["frames_hurried"] == (fitted + 1) // 2, (meta["frames_hurried"], fitted)
    # Every later drop has a stated cause (the replay outruns three cameras on two cores).
    by_cause = meta["frames_dropped_by_cause"]
    assert sorted(f for frames in by_cause.values() for f in frames) == meta["frames_dropped"]
    assert {k: len(v) for k, v in by_cause.items()} == meta["drops_by_cause"]
    assert meta["first_mesh"]["frame"] == 0 and meta["first_mesh_after_clock_s"] < 3.0, meta["first_mesh"]
    budget = meta["latency_budget"]
    assert budget["max_latency_ms"] == 3000.0 and budget["drops"] == meta["drops_by_cause"]
    # One landmark actor per camera: each camera's time, and the frame's landmark time their slowest.
    stages = budget["stages"]
    assert {"landmarks", "landmarks.0", "landmarks.1", "landmarks.2", "fit", "smooth"} <= set(stages)
    assert stages["landmarks"]["p95"] >= max(stages[f"landmarks.{k}"]["p50"] for k in range(3))
