"""Synthetic captures: Kinect files and dataset files agree with each other and with the ground truth."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from scipy.ndimage import minimum_filter

from mmface4d_stream.formats.audio import read_wav
from mmface4d_stream.formats.color_mp4 import ColorMp4Reader
from mmface4d_stream.formats.depth_nut import DepthNutReader
from mmface4d_stream.formats.intrinsics import IntrinsicsJson
from mmface4d_stream.formats.mesh_nut import MeshNutReader
from mmface4d_stream.k4a.mkv_reader import MkvReader
from mmface4d_stream.k4a.registration import DepthToColorRegistration
from mmface4d_stream.render.kinect_sensor import DepthNoise
from mmface4d_stream.render.synth import build_rig, synthesize_capture

N_FRAMES = 20


@pytest.fixture(scope="module")
def noisy_capture(tmp_path_factory):
    # Dataset files only (the MKVs are checked on the exact capture): keeps the fixture short.
    return synthesize_capture(tmp_path_factory.mktemp("noisy"), frames=N_FRAMES, cameras=3, seed=5,
                              name="talk", write_mkv=False, progress=False)


@pytest.fixture(scope="module")
def exact_capture(tmp_path_factory):
    return synthesize_capture(tmp_path_factory.mktemp("exact"), frames=3, cameras=3, seed=2, name="exact",
                              noise=DepthNoise(enabled=False), progress=False)


@pytest.mark.slow  # the 20-frame, 3-camera capture takes 15-50 s on 2 shared cores
def test_layout_and_ground_truth(noisy_capture, exact_capture):
    cap = noisy_capture
    assert cap.mkv_paths == () and not (cap.out_dir / "kinect").exists()
    assert len(exact_capture.mkv_paths) == 3 and all(p.is_file() for p in exact_capture.mkv_paths)
    for paths in (cap.color_paths, cap.depth_paths, cap.intrinsics_paths, cap.calibration_paths):
        assert len(paths) == 3 and all(p.is_file() for p in paths)
    faces = np.load(cap.gt_faces_path)
    with MeshNutReader(cap.gt_mesh_prefix) as gt:
        assert len(gt) == N_FRAMES
        v0 = gt[0]
    assert faces.max() < len(v0) and 5000 < len(v0) < 10000
    # The nose tip (MediaPipe point 1) is ~0.7 m in front of the reference camera.
    assert v0[1, 2] == pytest.approx(0.7, abs=0.03)
    cams = json.loads(cap.cameras_path.read_text())
    assert len(cams["devices"]) == 3
    np.testing.assert_allclose(cams["devices"][0]["T_ref_from_color"], np.eye(4), atol=1e-12)
    yaw = [np.degrees(np.arctan2(d["T_ref_from_color"][0][2], d["T_ref_from_color"][2][2])) for d in cams["devices"]]
    np.testing.assert_allclose(sorted(yaw), [-35, 0, 35], atol=1e-6)
    audio = read_wav(cap.wav_path)
    assert audio.rate == 16000 and len(audio.samples) == round(N_FRAMES * 16000 / 30)
    intr = IntrinsicsJson.load(cap.intrinsics_paths[1])
    assert (intr.width, intr.height) == (1920, 1080)
    assert intr.fx == pytest.approx(cams["devices"][1]["color"]["fx"])
    assert intr.serial_number == cams["devices"][1]["serial_number"]


def test_ground_truth_lies_on_the_rendered_depth(exact_capture):
    # Projecting the ground-truth vertices into each color camera lands them on the depth written
    # to NAME_i.nut (exact capture: no noise), for the vertices that face that camera.
    cap = exact_capture
    cams = json.loads(cap.cameras_path.read_text())
    with MeshNutReader(cap.gt_mesh_prefix) as gt:
        vertices = gt[1].astype(np.float64)
    rig = build_rig(3, seed=cap.seed)
    for i, device in enumerate(rig):
        np.testing.assert_allclose(device.T_ref_from_color, cams["devices"][i]["T_ref_from_color"])
        T = np.linalg.inv(device.T_ref_from_color)
        points = vertices @ T[:3, :3].T + T[:3, 3]
        pixels, valid = device.calibration.color.project(points, require_inside=True)
        with DepthNutReader(cap.depth_paths[i]) as nut:
            depth = nut[1]
        uv = np.rint(pixels[valid]).astype(int)
        measured = depth[uv[:, 1], uv[:, 0]] / 1000.0
        diff = measured - points[valid, 2]
        # Nearest surface within a pixel of the projection (robust to rounding at silhouettes).
        nearest = minimum_filter(np.where(depth > 0, depth, 65535), size=3)[uv[:, 1], uv[:, 0]] / 1000.0
        diff_nearest = nearest - points[valid, 2]
        # Visible vertices agree to the mm quantization (plus the ~0.5 px rounding of the pixel
        # on sloped skin); hidden ones lie behind the rendered surface (measured nearer), and only
        # silhouette vertices may land on the background.
        visible = np.abs(diff) < 0.003
        assert visible.mean() > 0.45
        assert np.median(np.abs(diff[visible])) < 0.0008
        assert (diff_nearest < 0.003).mean() > 0.995


def test_mkv_registration_matches_color_camera_depth(exact_capture):
    cap = exact_capture
    for i in range(3):
        with MkvReader(cap.mkv_paths[i]) as mkv:
            calibration = mkv.calibration
            captures = list(mkv)
        assert len(captures) == 3
        assert calibration.serial_number == json.loads(cap.cameras_path.read_text())["devices"][i]["serial_number"]
        registration = DepthToColorRegistration(calibration)
        with DepthNutReader(cap.depth_paths[i]) as nut:
            direct = nut[2]
        registered = registration.depth_to_color(captures[2].depth)
        assert registered.shape == direct.shape == (1080, 1920)
        both = (registered > 0) & (direct > 0)
        assert both.mean() > 0.3
        delta = np.abs(registered[both].astype(np.int32) - direct[both].astype(np.int32))
        assert np.median(delta) < 2.0
        # On the face itself (< 1 m) too.
        face = both & (direct < 1000)
        assert face.sum() > 5000
        assert np.median(np.abs(registered[face].astype(np.int32) - direct[face].astype(np.int32))) < 2.0
        # Timestamps: 30 fps, subordinates delayed by their wired-sync delay.
        stamps = [c.depth_timestamp_usec for c in captures]
        assert np.diff(stamps).tolist() == [33333, 33333]


def test_same_seed_same_content(tmp_path):
    def digest(cap) -> dict[str, str]:
        out = {}
        for i, path in enumerate(cap.color_paths):
            with ColorMp4Reader(path) as r:
                out[f"mp4{i}"] = hashlib.sha256(b"".join(f.tobytes() for f in r)).hexdigest()
        for i, path in enumerate(cap.depth_paths):
            with DepthNutReader(path) as r:
                out[f"nut{i}"] = hashlib.sha256(b"".join(f.tobytes() for f in r)).hexdigest()
        for i, path in enumerate(cap.mkv_paths):
            with MkvReader(path) as r:
                h = hashlib.sha256()
                for c in r:
                    h.update(c.color.tobytes() + c.depth.tobytes() + c.ir.tobytes() + str(c.depth_timestamp_usec).encode())
                h.update(r.calibration_raw)
                out[f"mkv{i}"] = h.hexdigest()
        with MeshNutReader(cap.gt_mesh_prefix) as r:
            out["gt"] = hashlib.sha256(b"".join(v.tobytes() for v in r)).hexdigest()
        out["wav"] = hashlib.sha256(read_wav(cap.wav_path).samples.tobytes()).hexdigest()
        out["cameras"] = hashlib.sha256(cap.cameras_path.read_bytes()).hexdigest()
        return out

    a = synthesize_capture(tmp_path / "a", frames=2, cameras=2, seed=11, name="s", progress=False)
    b = synthesize_capture(tmp_path / "b", frames=2, cameras=2, seed=11, name="s", progress=False)
    c = synthesize_capture(tmp_path / "c", frames=2, cameras=2, seed=12, name="s", progress=False)
    da, db, dc = digest(a), digest(b), digest(c)
    assert da == db
    assert all(da[k] != dc[k] for k in ("nut0", "nut1", "mkv0", "gt", "wav"))


@pytest.mark.slow
def test_mediapipe_finds_the_face_in_every_camera(noisy_capture):
    from mmface4d_stream.face.landmarks import FaceLandmarker

    cams = json.loads(noisy_capture.cameras_path.read_text())
    rig = build_rig(3, seed=noisy_capture.seed)
    for i, path in enumerate(noisy_capture.color_paths):
        found = 0
        with FaceLandmarker() as landmarker, ColorMp4Reader(path) as frames, MeshNutReader(noisy_capture.gt_mesh_prefix) as gt:
            for rgb, vertices in zip(frames, gt):
                # Every frame through the full-range detector, then FaceMesh on its crop (no tracking).
                landmarker.reset()
                result = landmarker.process(rgb)
                if not result.found or result.roi_source != "detector":
                    continue
                found += 1
                # The nose tip lands within a few pixels of the true one (vertex 1 is MediaPipe point 1).
                device = cams["devices"][i]
                T = np.linalg.inv(np.array(device["T_ref_from_color"]))
                nose = T[:3, :3] @ vertices[1] + T[:3, 3]
                expected = rig[i].calibration.color.project(nose).pixels
                assert np.linalg.norm(result.points_px[1] - expected) < 12.0
        assert found >= 0.95 * N_FRAMES, f"camera {i}: face found in {found} of {N_FRAMES} frames"
