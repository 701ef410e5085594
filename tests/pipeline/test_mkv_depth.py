"""MKV frames carry raw depth: the landmark stage registers only the face's box, and gets the same crops
as from fully registered frames; rig calibration and the recorder register whole frames."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mmface4d_stream.k4a.registration import DepthToColorRegistration
from mmface4d_stream.pipeline.rig_setup import calibrate_rig
from mmface4d_stream.pipeline.sources import DepthRegistrations, MkvSource
from mmface4d_stream.pipeline.stages import LandmarkStage


def _registered(frame_set, registrations: dict):
    """The frame set as a registering source gives it: depth_mm of the whole color image, no raw depth."""
    cameras = []
    for cam in frame_set.cameras:
        if cam is not None:
            if cam.serial not in registrations:
                registrations[cam.serial] = DepthToColorRegistration(cam.calibration)
            reg = registrations[cam.serial]
            cam = dataclasses.replace(cam, depth_mm=reg.depth_to_color(cam.depth_raw), depth_raw=None, calibration=None)
        cameras.append(cam)
    return dataclasses.replace(frame_set, cameras=cameras)


def _blacked_out(frame_set, camera: int):
    """The frame set with one camera's color black (its tracked face is lost there)."""
    cameras = list(frame_set.cameras)
    cameras[camera] = dataclasses.replace(cameras[camera], rgb=np.zeros_like(cameras[camera].rgb))
    return dataclasses.replace(frame_set, cameras=cameras)


@pytest.fixture(scope="module")
def mkv_frame_sets(short_capture):
    frame_sets = list(MkvSource(short_capture.mkv_paths, max_frames=8))
    assert len(frame_sets) == 8
    cam = frame_sets[0].cameras[0]
    assert cam.depth_mm is None and cam.depth_raw.shape == (576, 640) and cam.calibration is not None
    # Frame 4: camera 1 sees nothing (tracking lost, found again in frame 5 with full depth).
    frame_sets[4] = _blacked_out(frame_sets[4], 1)
    return frame_sets


def test_landmark_stage_registers_only_the_box_and_matches_full_registration(mkv_frame_sets, monkeypatch):
    full_calls = []
    original_full = DepthRegistrations.full

    def counting_full(self, camera):
        full_calls.append(camera.camera)
        return original_full(self, camera)

    monkeypatch.setattr(DepthRegistrations, "full", counting_full)
    raw_stage, full_stage = LandmarkStage(3), LandmarkStage(3)
    registrations: dict = {}
    try:
        for frame_set in mkv_frame_sets:
            got = raw_stage.process(frame_set)
            expected = full_stage.process(_registered(frame_set, registrations))
            for k, (a, b) in enumerate(zip(got.crops, expected.crops)):
                where = f"frame {frame_set.frame}, camera {k}"
                assert a.found == b.found and a.offset_px == b.offset_px, where
                np.testing.assert_array_equal(a.landmarks_px, b.landmarks_px, err_msg=where)
                assert a.confidence == b.confidence and a.intrinsics == b.intrinsics, where
                if b.depth_mm is None:
                    assert a.depth_mm is None, where
                else:
                    assert a.depth_mm.dtype == np.uint16 and a.depth_mm.flags.c_contiguous, where
                    np.testing.assert_array_equal(a.depth_mm, b.depth_mm, err_msg=where)
            if frame_set.frame == 4:
                assert not got.crops[1].found and got.crops[0].found
            else:
                assert all(c.found and c.depth_mm.size and (c.depth_mm > 0).mean() > 0.3 for c in got.crops)
    finally:
        raw_stage.close()
        full_stage.close()
    # Whole frames registered only to find faces: every camera's first frame, camera 1 while lost.
    assert sorted(full_calls) == [0, 1, 1, 1, 2]


def test_rig_calibration_and_recorder_register_whole_frames(mkv_frame_sets, short_capture, tmp_path):
    from mmface4d_stream.formats.depth_nut import DepthNutReader
    from mmface4d_stream.pipeline.dataset_recorder import DatasetRecorder

    source = MkvSource(short_capture.mkv_paths, max_frames=4)
    registrations: dict = {}

    class Registered:
        intrinsics, serials = source.intrinsics, source.serials

        def __iter__(self):
            return (_registered(f, registrations) for f in source)

    got, expected = calibrate_rig(source, frames=2), calibrate_rig(Registered(), frames=2)
    assert got.frames == expected.frames
    for a, b in zip(got.transforms_for(source.serials), expected.transforms_for(source.serials)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)  # same depth; BLAS sums may differ in the last bit

    recorder = DatasetRecorder(tmp_path, "rec", source.serials, source.intrinsics)
    for frame_set in mkv_frame_sets[:2]:
        recorder.write(frame_set)
    recorder.close()
    with DepthNutReader(tmp_path / "rec_2.nut") as reader:
        written = [frame for frame, _ in zip(reader, range(2))]
    for frame_set, depth in zip(mkv_frame_sets, written):
        np.testing.assert_array_equal(depth, _registered(frame_set, registrations).cameras[2].depth_mm)
