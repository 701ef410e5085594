"""`reconstruct` on synthetic captures: accuracy against ground truth, outputs, gaps and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from mmface4d_stream.errors import InputError
from mmface4d_stream.fit.evaluate import evaluate_sequence
from mmface4d_stream.formats.color_mp4 import ColorMp4Writer
from mmface4d_stream.formats.depth_nut import DepthNutWriter
from mmface4d_stream.formats.intrinsics import IntrinsicsJson
from mmface4d_stream.formats.mesh_nut import MeshNutReader
from mmface4d_stream.pipeline.run import ReconstructOptions, reconstruct
from mmface4d_stream.pipeline.stage_config import SourceConfig
from mmface4d_stream.pipeline.sinks import is_finished, output_paths


def test_three_cameras_meet_the_accuracy_bound(short_capture, tmp_path):
    out = tmp_path / "rec"
    meta = reconstruct([short_capture.sequence_prefix], out, ReconstructOptions(progress=False))
    assert meta["frames"] == 10 and meta["frames_lost_face"] == [] and meta["model"] == "template"
    assert (tmp_path / "rec_rig.json").is_file() and (tmp_path / "rec_faces.npy").is_file()
    saved = json.loads((tmp_path / "rec_meta.json").read_text())
    assert saved["frames_written"] == 10 and len(saved["cameras"]) == 3
    assert saved["complete"] is True and saved["input_frames"] == 10 and is_finished(out)
    with MeshNutReader(out) as reader:
        assert len(reader) == 10
    error = evaluate_sequence(out, short_capture.gt_mesh_prefix.parent, reference_device=meta["reference_camera"])
    # The fitter's bound on noisy synthetic captures (README): 3 cameras, mean <= 1.5 mm, p95 <= 4 mm.
    assert error.recon_to_gt.mean_mm < 1.5 and error.recon_to_gt.p95_mm < 4.0, error
    assert error.gt_to_recon.mean_mm < 2.5, error


def test_one_camera_from_the_mkv(short_capture, tmp_path):
    out = tmp_path / "mkv1"
    meta = reconstruct([short_capture.mkv_paths[0]], out,
                       ReconstructOptions(source=SourceConfig(max_frames=6), progress=False))
    assert meta["frames"] == 6 and meta["reference_camera"] is None
    # 6 of the recording's 10 frames: not finished, so a later full run does it again (issue 13, item 4).
    written = json.loads(output_paths(out)["meta"].read_text())
    assert (written["frames_processed"], written["input_frames"], written["complete"]) == (6, 10, False)
    assert not is_finished(out)
    with MeshNutReader(out) as reader:
        assert len(reader) == 6
        first = reader[0]
    # The one-camera fit lands on the face: every reconstructed vertex within 1 cm of the true surface.
    from mmface4d_stream.fit.evaluate import point_to_surface_m

    with MeshNutReader(short_capture.gt_mesh_prefix) as gt:
        truth = gt[0]
    faces = np.load(short_capture.gt_faces_path)
    assert np.median(point_to_surface_m(first, truth, faces)) < 0.0025


def _blank_sequence(folder, frames=(3, 3)):
    for cam, n in enumerate(frames):
        with ColorMp4Writer(folder / f"b_{cam}.mp4", 320, 240) as writer:
            for _ in range(n):
                writer.write(np.full((240, 320, 3), 40, np.uint8))
        with DepthNutWriter(folder / f"b_{cam}.nut", 320, 240) as writer:
            for _ in range(n):
                writer.write(np.zeros((240, 320), np.uint16))
        IntrinsicsJson(300.0, 300.0, 160.0, 120.0, 320, 240, serial_number=f"s{cam}").save(folder / f"b_{cam}.json")
    return folder / "b"


def test_face_never_found_is_a_clear_error(tmp_path):
    prefix = _blank_sequence(tmp_path, frames=(3,))
    with pytest.raises(InputError, match="no face was found"):
        reconstruct([prefix], tmp_path / "out", ReconstructOptions(progress=False))
    assert not (tmp_path / "out_meta.json").exists()  # not finished: a re-run redoes it


def test_cameras_with_different_frame_counts(tmp_path):
    prefix = _blank_sequence(tmp_path, frames=(3, 2))
    with pytest.raises(InputError, match="different frame counts"):
        reconstruct([prefix], tmp_path / "out", ReconstructOptions(progress=False))


def test_rig_never_calibrated_is_a_clear_error(tmp_path):
    prefix = _blank_sequence(tmp_path, frames=(3, 3))
    with pytest.raises(InputError, match="cannot calibrate the rig"):
        reconstruct([prefix], tmp_path / "out", ReconstructOptions(progress=False))


def test_cli_reports_bad_input_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mmface4d_stream.cli", "reconstruct", "--file_path",
                             str(tmp_path / "none"), "--save_path", str(tmp_path / "o")], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "no files named none_" in result.stderr
    result = subprocess.run([sys.executable, "-m", "mmface4d_stream.cli", "reconstruct", "--file_path",
                             str(tmp_path / "none"), "--save_path", str(tmp_path / "o"), "--face-model", "bfm"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--bfm-folder" in result.stderr
