"""The face fitter on synthetic RGB-D frames with known pose, coefficients and mesh.

The model is a BFM-format synthetic face (written to a .mat and loaded back through `BfmModel`),
landmarks are exact projections of the mapped vertices, depth maps are z-buffered renders of the
mesh quantized to millimetres like a Kinect's.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mmface4d_stream.face.models import BfmModel
from mmface4d_stream.face.template_model import TemplateModel
from mmface4d_stream.fit.camera_terms import FitCamera
from mmface4d_stream.fit.fitter import FaceFitter, FitterConfig
from mmface4d_stream.geometry import so3_log
from mmface4d_stream.fit.synthetic import (
    frontal_pose,
    make_rig,
    render_depth_mm,
    synthetic_face_model,
    synthetic_frame,
    write_bfm_mat,
)
from mmface4d_stream.fit.fit_io import CameraObservation, FrameObservation

KINECT_LIKE_DISTORTION = (0.5, -2.5, 1.5, 0.4, -2.3, 1.4, 1e-4, -2e-4)


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def bfm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bfm")
    write_bfm_mat(synthetic_face_model(n_vertices=3000, n_id=20, n_exp=10, seed=0), folder)
    return BfmModel.load(folder)


@pytest.fixture(scope="module")
def truth():
    rng = np.random.default_rng(3)
    return {
        "alpha": (rng.normal(size=20) * 0.8).astype(np.float32),
        "beta": (rng.normal(size=10) * 0.8).astype(np.float32),
        "pose": frontal_pose(12, -8, 4, (0.02, -0.01, 0.66)),
    }


def _errors(result, gt_vertices, r_true, t_true):
    err_mm = 1e3 * np.linalg.norm(result.vertices - gt_vertices, axis=1)
    rot_deg = np.rad2deg(np.linalg.norm(so3_log(result.pose.rotation @ r_true.T)))
    t_mm = 1e3 * np.linalg.norm(result.pose.translation - t_true)
    return err_mm, rot_deg, t_mm


@pytest.mark.parametrize("n_cameras", [1, 3])
@pytest.mark.parametrize("distortion", [None, KINECT_LIKE_DISTORTION], ids=["pinhole", "distorted"])
def test_recovers_pose_and_coefficients(bfm, truth, n_cameras, distortion):
    r, t = truth["pose"]
    obs, gt = synthetic_frame(bfm, make_rig(n_cameras, distortion=distortion), r, t, truth["alpha"], truth["beta"])
    fitter = FaceFitter(bfm, FitterConfig(landmark_sigma_px=1.0))  # exact landmarks: trust them
    res = fitter.fit(obs, fit_identity=True)
    err_mm, rot_deg, t_mm = _errors(res, gt, r, t)
    assert res.converged and not res.lost and res.depth_used and "cold_start" in res.flags
    assert err_mm.mean() < 0.3 and err_mm.max() < 1.5
    assert rot_deg < 0.3 and t_mm < 0.6
    assert np.abs(res.exp_coeffs - truth["beta"]).max() < 0.15
    assert np.abs(res.id_coeffs - truth["alpha"]).max() < 0.3
    assert res.residuals["landmark_rms_px"] < 0.6 and res.residuals["depth_rms_mm"] < 0.5
    assert res.residuals["depth_inliers"] > 0.6 * fitter.config.depth_samples * n_cameras
    assert res.vertices.dtype == np.float32 and res.vertices.shape == (3000, 3)


def test_warm_start_needs_fewer_iterations_than_cold(bfm, truth):
    r, t = truth["pose"]
    rig = make_rig(3)
    first, _ = synthetic_frame(bfm, rig, r, t, truth["alpha"], truth["beta"])
    r2, t2 = frontal_pose(13.5, -7, 4.5, (0.023, -0.008, 0.662))
    beta2 = truth["beta"] + 0.3
    second, gt2 = synthetic_frame(bfm, rig, r2, t2, truth["alpha"], beta2)
    cfg = FitterConfig(warm_iterations=30, cold_iterations=30, offsets=False)
    fitter = FaceFitter(bfm, cfg)
    prev = fitter.fit(first, fit_identity=True)
    warm = fitter.fit(second, warm_start=prev, fit_identity=False)
    cold = fitter.fit(second, warm_start=None, fit_identity=False)
    assert warm.converged and cold.converged
    assert warm.iterations < cold.iterations
    # ... for the same result quality.
    for res in (warm, cold):
        assert 1e3 * np.linalg.norm(res.vertices - gt2, axis=1).mean() < 0.5
    assert abs(warm.residuals["depth_rms_mm"] - cold.residuals["depth_rms_mm"]) < 0.05
    assert abs(warm.residuals["landmark_rms_px"] - cold.residuals["landmark_rms_px"]) < 0.2


def test_stream_tracks_changing_expression_with_few_iterations(bfm, truth):
    rig = make_rig(3)
    fitter = FaceFitter(bfm, FitterConfig(identity_frames=2))
    rng = np.random.default_rng(7)
    for k in range(5):
        beta = truth["beta"] + rng.normal(scale=0.3, size=10).astype(np.float32)
        r, t = frontal_pose(12 + k, -8 + 0.5 * k, 4, (0.02 + 0.002 * k, -0.01, 0.66))
        obs, gt = synthetic_frame(bfm, rig, r, t, truth["alpha"], beta, frame_index=k)
        res = fitter.process(obs)
        assert res.frame_index == k and not res.lost
        assert 1e3 * np.linalg.norm(res.vertices - gt, axis=1).mean() < 0.5
        if k > 0:
            assert "cold_start" not in res.flags and res.iterations <= fitter.config.warm_iterations
        if k >= 2:
            assert "identity_frozen" in res.flags
    frozen = res.id_coeffs.copy()
    res = fitter.process(obs)
    np.testing.assert_array_equal(res.id_coeffs, frozen)


def test_stream_with_sensor_noise_does_not_drift(bfm, truth):
    """Kinect-like depth noise (1.5 mm, 5 % holes) and 2 px landmark noise on a moving, talking face."""
    rig = make_rig(3)
    rng = np.random.default_rng(11)
    fitter = FaceFitter(bfm)
    errors = []
    for k in range(10):
        beta = (np.sin(0.4 * k + np.arange(10)) * 0.8).astype(np.float32)
        r, t = frontal_pose(10 + 8 * np.sin(0.3 * k), -5 + 10 * np.sin(0.2 * k), 3, (0.01 + 0.005 * k, -0.01, 0.66))
        obs, gt = synthetic_frame(bfm, rig, r, t, truth["alpha"], beta, landmark_noise_px=2.0, rng=rng)
        for cam_obs in obs.cameras:
            d = cam_obs.depth_mm.astype(np.float64)
            d[d > 0] += rng.normal(scale=1.5, size=int((d > 0).sum()))
            d[rng.random(d.shape) < 0.05] = 0
            cam_obs.depth_mm = np.clip(np.round(d), 0, 65535).astype(np.uint16)
        res = fitter.process(obs)
        errors.append(1e3 * np.linalg.norm(res.vertices - gt, axis=1).mean())
    assert max(errors) < 0.8 and np.mean(errors[-3:]) < 0.6, errors


def test_deterministic(bfm, truth):
    r, t = truth["pose"]
    obs, _ = synthetic_frame(bfm, make_rig(3), r, t, truth["alpha"], truth["beta"])
    a = FaceFitter(bfm).process(obs)
    b = FaceFitter(bfm).process(obs)
    np.testing.assert_array_equal(a.vertices, b.vertices)
    np.testing.assert_array_equal(a.offsets, b.offsets)
    np.testing.assert_array_equal(a.exp_coeffs, b.exp_coeffs)
    assert a.iterations == b.iterations and a.residuals == b.residuals


def test_lost_face_carries_previous_result(bfm, truth):
    r, t = truth["pose"]
    rig = make_rig(2)
    obs, _ = synthetic_frame(bfm, rig, r, t, truth["alpha"], truth["beta"], frame_index=0)
    fitter = FaceFitter(bfm)
    no_face = FrameObservation([dataclasses.replace(c, landmarks_px=None) for c in obs.cameras], frame_index=1)
    before = fitter.process(no_face)
    assert before.lost and np.isnan(before.vertices).all() and before.vertices.shape == (3000, 3)
    first = fitter.process(obs)
    lost = fitter.process(FrameObservation(no_face.cameras, frame_index=2))
    assert lost.lost and lost.frame_index == 2 and lost.iterations == 0 and lost.flags == ("lost",)
    np.testing.assert_array_equal(lost.vertices, first.vertices)
    # All landmarks NaN is no face either.
    nan_face = FrameObservation([dataclasses.replace(c, landmarks_px=np.full((478, 2), np.nan)) for c in obs.cameras], 3)
    assert fitter.process(nan_face).lost
    # The face comes back: a warm-started fit again.
    back = fitter.process(obs)
    assert not back.lost and "cold_start" not in back.flags


def test_no_depth_falls_back_to_landmarks(bfm, truth):
    r, t = truth["pose"]
    obs, gt = synthetic_frame(bfm, make_rig(3), r, t, truth["alpha"], truth["beta"])
    zero = FrameObservation([dataclasses.replace(c, depth_mm=np.zeros_like(c.depth_mm)) for c in obs.cameras])
    res = FaceFitter(bfm).fit(zero)
    assert not res.depth_used and "no_depth" in res.flags and "depth_rms_mm" not in res.residuals
    # Landmarks alone (3 views, exact) still place the face within a few millimetres.
    assert 1e3 * np.linalg.norm(res.vertices - gt, axis=1).mean() < 5.0
    assert res.residuals["landmark_rms_px"] < 1.0
    # Depth missing in one camera only: flagged for that camera, depth still used.
    partial = FrameObservation([obs.cameras[0], dataclasses.replace(obs.cameras[1], depth_mm=None), obs.cameras[2]])
    res = FaceFitter(bfm).fit(partial)
    assert res.depth_used and "no_depth:cam1" in res.flags


def test_offsets_recover_shape_outside_the_model(bfm, truth):
    """A bump the linear model cannot express is picked up by the per-vertex offsets."""
    r, t = truth["pose"]
    rig = make_rig(3)
    verts = bfm.vertices(truth["alpha"], truth["beta"]).astype(np.float64)
    centre = np.array([0.035, -0.02, 0.0])
    bump = 0.004 * np.exp(-((verts[:, :2] - centre[:2]) ** 2).sum(1) / (2 * 0.012**2))
    verts[:, 2] += bump
    gt = verts @ r.T + t
    obs, _ = synthetic_frame(bfm, rig, r, t, truth["alpha"], truth["beta"])
    for cam_obs, (cam, t_ref_cam) in zip(obs.cameras, rig):
        cam_obs.depth_mm = render_depth_mm((gt - t_ref_cam[:3, 3]) @ t_ref_cam[:3, :3], bfm.triangles, cam)
    region = bump > 0.002
    errs = {}
    for offsets in (False, True):
        fitter = FaceFitter(bfm, FitterConfig(offsets=offsets, offset_cg_iterations=30))
        res = fitter.fit(obs, fit_identity=True)
        res = fitter.fit(obs, warm_start=res, fit_identity=True)
        errs[offsets] = 1e3 * np.linalg.norm(res.vertices - gt, axis=1)[region].mean()
    assert errs[True] < 0.6 * errs[False]
    assert errs[True] < 1.2


def test_rejects_bad_inputs(bfm, truth):
    r, t = truth["pose"]
    obs, _ = synthetic_frame(bfm, make_rig(1), r, t, truth["alpha"], truth["beta"], with_depth=False)
    fitter = FaceFitter(bfm)
    bad = FrameObservation([dataclasses.replace(obs.cameras[0], depth_mm=np.zeros((10, 10), np.uint16))])
    with pytest.raises(ValueError, match="depth map is 10x10"):
        fitter.fit(bad)
    with pytest.raises(ValueError, match="at least one camera"):
        fitter.fit(FrameObservation([]))
    other = synthetic_face_model(n_vertices=500, n_id=2, n_exp=2)
    res_other = FaceFitter(other).fit(synthetic_frame(other, make_rig(1), r, t)[0])
    with pytest.raises(ValueError, match="warm start"):
        fitter.fit(obs, warm_start=dataclasses.replace(res_other, model_name="x"))
    with pytest.raises(ValueError, match="no model yet"):
        FaceFitter(None).fit(obs)


def test_fit_camera_from_k4a_style_object():
    from mmface4d_stream.formats.intrinsics import IntrinsicsJson
    from mmface4d_stream.k4a.camera_model import CameraModel

    # k4a CameraModel: named coefficients (its `distortion` property is in OpenCV's order)
    model = CameraModel(1920, 1080, 910.0, 910.5, 960.0, 540.0, k1=0.5, k2=-2.5, k3=1.5, k4=0.4, k5=-2.3, k6=1.4,
                        p1=1e-4, p2=-2e-4, metric_radius=1.7)
    cam = FitCamera.of(model)
    assert cam.distortion == KINECT_LIKE_DISTORTION and cam.max_radius == 1.7
    uv = np.array([[100.0, 80.0], [960.0, 540.0], [1800.0, 1000.0]])
    xy = cam.undistort(uv)
    back = cam.distort(xy) * [cam.fx, cam.fy] + [cam.cx, cam.cy]
    np.testing.assert_allclose(back, uv, atol=1e-6)
    pts = torch.tensor(np.concatenate([xy, np.ones((3, 1))], 1) * 0.7, dtype=torch.float32)
    np.testing.assert_allclose(cam.project_torch(pts).numpy(), uv, atol=2e-3)
    pinhole = FitCamera.of(IntrinsicsJson(500, 500, 320, 240, 640, 480))
    assert pinhole.distortion is None


def test_template_mode_builds_the_subject_and_tracks_expressions(astronaut_face_points):
    """No model given: the fitter lifts the first frame's MediaPipe points into a template, then fits."""
    subject, r0, t0 = TemplateModel.from_points(astronaut_face_points, subdivisions=1)
    rig = make_rig(3)
    fitter = FaceFitter(None, FitterConfig(template_subdivisions=1))
    rng = np.random.default_rng(2)
    for k in range(4):
        beta = np.zeros(subject.n_exp, np.float32) if k == 0 else rng.normal(scale=0.5, size=subject.n_exp).astype(np.float32)
        obs, gt = synthetic_frame(subject, rig, r0, t0 + [0.0, 0.0, 0.002 * k], None, beta, frame_index=k)
        res = fitter.process(obs)
        assert not res.lost and res.model_name == "template"
        assert fitter.model.n_vertices == subject.n_vertices
        err = 1e3 * np.linalg.norm(res.vertices - gt, axis=1)
        if k == 0:
            assert "template_built" in res.flags
        assert np.median(err) < 1.0 and np.percentile(err, 95) < 3.0


def test_template_border_seen_by_one_camera_is_where_that_camera_sees_it(astronaut_face_points):
    """The subject turned 20° towards one side camera: the far side of its face's outline is seen
    by the centre camera only, past the silhouette for the other side camera, which still observes
    its landmarks (exact in 2D, as MediaPipe places the far side) over the cheek in front. The
    template built from that frame, and the fit, keep the border where it is (the median of the
    three cameras' lifts put it up to 76 mm off, mean 15 mm over the 36 outline points)."""
    from mmface4d_stream.fit.landmark_weights import face_oval_points
    from mmface4d_stream.geometry import so3_exp

    subject, r0, t0 = TemplateModel.from_points(astronaut_face_points, subdivisions=1)
    turn = so3_exp(np.deg2rad([0.0, 20.0, 0.0]))
    centre = np.array([0.0, 0.0, 0.7])
    r = turn @ r0
    t = centre - subject.mean_shape.mean(0) @ r.T  # the turned face's centroid at the rig's centre
    obs, gt = synthetic_frame(subject, make_rig(3), r, t)
    res = FaceFitter(None, FitterConfig(template_subdivisions=1)).process(obs)
    assert "template_built" in res.flags
    oval = face_oval_points()
    err = 1e3 * np.linalg.norm(res.vertices[oval] - gt[oval], axis=1)
    assert err.max() < 10.0 and err.mean() < 3.0


def test_fit_camera_matches_the_real_kinect_colour_model(k4a_sample_dir):
    """FitCamera built from the real device's k4a CameraModel projects like that model does."""
    from mmface4d_stream.k4a.raw_calibration import read_raw_calibration

    model = read_raw_calibration(k4a_sample_dir / "calibration.json").calibration("1080P", "NFOV_UNBINNED").color
    cam = FitCamera.of(model)
    assert cam.distortion is not None and (cam.width, cam.height) == (1920, 1080)
    rng = np.random.default_rng(0)
    pts = np.stack([rng.uniform(-0.3, 0.3, 200), rng.uniform(-0.2, 0.2, 200), rng.uniform(0.5, 1.2, 200)], 1)
    expected = np.asarray(model.project(pts).pixels)
    got = cam.project_torch(torch.tensor(pts, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # The undistorted ray map inverts it to ~1e-3 px (coarse grid + bilinear interpolation).
    rays = cam.ray_map("cpu")
    uv = np.array([[100, 80], [960, 540], [1850, 1000]])
    xy = rays[uv[:, 1], uv[:, 0]].numpy().astype(np.float64)
    back = cam.project_torch(torch.tensor(np.concatenate([xy, np.ones((3, 1))], 1))).numpy()
    np.testing.assert_allclose(back, uv, atol=0.02)


def test_template_fit_on_a_rendered_kinect_capture(tmp_path):
    """End to end on realistic data: the render helper's synthetic Kinect capture (lens distortion,
    Kinect-like depth noise), MediaPipe landmarks from the landmark helper, the built-in template."""
    from scipy.spatial import cKDTree

    from mmface4d_stream.face.landmarks import FaceLandmarker
    from mmface4d_stream.fit.model_pack import vertex_normals
    from mmface4d_stream.formats.color_mp4 import ColorMp4Reader
    from mmface4d_stream.formats.depth_nut import DepthNutReader
    from mmface4d_stream.formats.mesh_nut import MeshNutReader
    from mmface4d_stream.render.synth import synthesize_capture

    import json

    n_cam, n_frames = 2, 4
    cap = synthesize_capture(tmp_path, frames=n_frames, cameras=n_cam, seed=3, write_mkv=False, progress=False)
    devices = json.loads(cap.cameras_path.read_text())["devices"]
    colors = [list(ColorMp4Reader(p)) for p in cap.color_paths]
    depths = [list(DepthNutReader(p)) for p in cap.depth_paths]
    truth = list(MeshNutReader(cap.gt_mesh_prefix))
    faces = torch.as_tensor(np.load(cap.gt_faces_path).astype(np.int64))
    detectors = [FaceLandmarker() for _ in range(n_cam)]
    fitter = FaceFitter()
    for i in range(n_frames):
        cams = []
        for c in range(n_cam):
            lm = detectors[c].process(colors[c][i], depths[c][i])
            cams.append(CameraObservation(devices[c]["color"], lm.points_px if lm.found else None, depths[c][i],
                                          None, np.array(devices[c]["T_ref_from_color"])))
        res = fitter.process(FrameObservation(cams, i))
        assert not res.lost and res.depth_used
        gt = truth[i]
        # Ground-truth vertices 0..467 are the MediaPipe points, like the template's.
        assert 1e3 * np.linalg.norm(res.vertices[:468] - gt[:468], axis=1).mean() < 8.0
        normals = vertex_normals(torch.as_tensor(gt)[None], faces)[0].numpy()
        _, j = cKDTree(gt).query(res.vertices)
        to_surface_mm = 1e3 * np.abs(((res.vertices - gt[j]) * normals[j]).sum(1))
        assert np.median(to_surface_mm) < 0.6 and np.mean(to_surface_mm) < 1.0


def test_stream_state_round_trip_continues_identically(bfm, truth):
    import pickle

    rig = make_rig(2)
    frames = []
    for k in range(4):
        r, t = frontal_pose(12 + k, -8, 4, (0.02, -0.01 + 0.002 * k, 0.66))
        frames.append(synthetic_frame(bfm, rig, r, t, truth["alpha"], truth["beta"] * (1 - 0.1 * k), frame_index=k)[0])
    straight = FaceFitter(bfm, FitterConfig(identity_frames=2))
    expected = [straight.process(f) for f in frames][-1]
    first = FaceFitter(bfm, FitterConfig(identity_frames=2))
    for f in frames[:2]:
        first.process(f)
    state = pickle.loads(pickle.dumps(first.stream_state()))
    assert state["model"] is None  # a user-given model is not copied
    resumed = FaceFitter(bfm, FitterConfig(identity_frames=2))
    resumed.restore_stream_state(state)
    got = [resumed.process(f) for f in frames[2:]][-1]
    np.testing.assert_allclose(got.vertices, expected.vertices, atol=1e-4)
    np.testing.assert_array_equal(got.id_coeffs, expected.id_coeffs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(bfm, truth):
    r, t = truth["pose"]
    rig = make_rig(3, distortion=KINECT_LIKE_DISTORTION)
    results = {}
    for device in ("cpu", "cuda"):
        fitter = FaceFitter(bfm, device=device)
        for k in range(3):
            obs, gt = synthetic_frame(bfm, rig, r, t + [0.0, 0.0, 0.002 * k], truth["alpha"], truth["beta"])
            results[device] = fitter.process(obs)
    assert 1e3 * np.linalg.norm(results["cuda"].vertices - gt, axis=1).mean() < 0.3
    np.testing.assert_allclose(results["cuda"].vertices, results["cpu"].vertices, atol=2e-4)


def test_a_face_crop_with_its_offset_fits_like_the_whole_image(bfm, truth):
    """The landmark stage hands the fitter crops with the whole image's camera and the crop's
    offset (per-camera tables, not per crop box): the fit equals the one on the whole images."""
    r, t = truth["pose"]
    obs, _ = synthetic_frame(bfm, make_rig(2, distortion=KINECT_LIKE_DISTORTION), r, t, truth["alpha"], truth["beta"])
    cropped = []
    for co in obs.cameras:
        lm = np.asarray(co.landmarks_px)
        x0, y0 = (int(v) - 150 for v in np.floor(np.nanmin(lm, 0)))
        x1, y1 = (int(v) + 150 for v in np.ceil(np.nanmax(lm, 0)))
        x0, y0 = max(x0, 0), max(y0, 0)  # wide enough to hold the depth crop the fitter picks
        assert x0 > 0 and y0 > 0 and x1 < co.depth_mm.shape[1] and y1 < co.depth_mm.shape[0]
        cropped.append(dataclasses.replace(co, landmarks_px=lm - (x0, y0), depth_mm=co.depth_mm[y0:y1, x0:x1],
                                           offset_px=(x0, y0)))
    whole = FaceFitter(bfm).process(obs)
    crop = FaceFitter(bfm).process(dataclasses.replace(obs, cameras=cropped))
    assert whole.depth_used and crop.depth_used
    np.testing.assert_allclose(crop.vertices, whole.vertices, atol=1e-5)
    with pytest.raises(ValueError, match="leaves"):
        bad = dataclasses.replace(cropped[0], offset_px=(10_000, 0))
        FaceFitter(bfm).fit(dataclasses.replace(obs, cameras=[bad]))
