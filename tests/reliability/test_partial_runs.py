"""Item 4: a run cut short by --max-frames is not "finished"; a re-run does the sequence again."""

from __future__ import annotations

import json

import numpy as np

from mmface4d_stream.pipeline.sinks import MeshNutSink, is_finished, output_paths
from mmface4d_stream.frame_records import MeshFrame


def _run(save_path, frames: int, input_frames: int | None) -> dict:
    sink = MeshNutSink(save_path)
    for k in range(frames):
        sink.process(MeshFrame("s", k, 0, np.full((10, 3), k, np.float32), False))
    sink.close(faces=np.array([[0, 1, 2]]), meta={"input_frames": input_frames})
    return json.loads(output_paths(save_path)["meta"].read_text())


def test_max_frames_run_is_not_finished_and_the_full_run_is(tmp_path):
    save = tmp_path / "seq"
    meta = _run(save, 3, input_frames=8)  # run_offline.py X --max-frames 3 on an 8-frame input
    assert (meta["frames_processed"], meta["input_frames"], meta["complete"]) == (3, 8, False)
    assert not is_finished(save)
    meta = _run(save, 8, input_frames=8)
    assert (meta["frames_processed"], meta["complete"]) == (8, True)
    assert is_finished(save)


def test_frames_before_the_first_face_count_as_processed(tmp_path):
    save = tmp_path / "seq"
    sink = MeshNutSink(save)
    sink.process(MeshFrame("s", 0, 0, np.full((10, 3), np.nan, np.float32), True))  # no face yet
    for k in (1, 2):
        sink.process(MeshFrame("s", k, 0, np.full((10, 3), k, np.float32), False))
    sink.close(meta={"input_frames": 3})
    assert json.loads(output_paths(save)["meta"].read_text())["frames_written"] == 3
    assert is_finished(save)


def test_live_runs_unknown_length_and_older_or_damaged_meta(tmp_path):
    assert _run(tmp_path / "live", 2, input_frames=None)["complete"] is True
    assert is_finished(tmp_path / "live")
    legacy = output_paths(tmp_path / "old")["meta"]
    legacy.write_text(json.dumps({"frames_written": 5}))  # written before this field existed
    assert is_finished(tmp_path / "old")
    damaged = output_paths(tmp_path / "bad")["meta"]
    damaged.write_text('{"frames_wri')
    assert not is_finished(tmp_path / "bad")
