"""Kinect calibration: parsing the real device file, mode intrinsics, lens model, builder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmface4d_stream.errors import InputError
from mmface4d_stream.geometry import RigidTransform
from mmface4d_stream.k4a.calibration import K4aCalibration
from mmface4d_stream.k4a.camera_model import CameraModel
from mmface4d_stream.k4a.modes import MODE_TABLE, ColorResolution, DepthMode
from mmface4d_stream.k4a.raw_calibration import (
    RawCamera,
    build_raw_calibration_json,
    parse_raw_calibration,
    read_raw_calibration,
)
from mmface4d_stream.k4a.synthetic_calibration import synthetic_raw_calibration

ALL_MODES = list(ColorResolution) + list(DepthMode)


@pytest.fixture(scope="module")
def raw_json(k4a_sample_dir) -> bytes:
    return (k4a_sample_dir / "calibration.json").read_bytes()


@pytest.fixture(scope="module")
def raw(raw_json):
    return parse_raw_calibration(raw_json)


def _model(raw, mode) -> CameraModel:
    return raw.color.camera_model(mode) if isinstance(mode, ColorResolution) else raw.depth.camera_model(mode)


def _sample_grid(model: CameraModel, max_pixels: int = 40_000) -> np.ndarray:
    """Pixel centres on a sub-grid that always includes the first/last rows and columns."""
    step = max(1, int(np.ceil(np.sqrt(model.width * model.height / max_pixels))))
    us = np.unique(np.r_[np.arange(0, model.width, step), model.width - 1])
    vs = np.unique(np.r_[np.arange(0, model.height, step), model.height - 1])
    u, v = np.meshgrid(us.astype(np.float64), vs.astype(np.float64))
    return np.stack([u, v], axis=-1)


# -- the real device file ------------------------------------------------------------------------


def test_real_calibration_values(raw):
    assert raw.serial_number == "001514394512"
    assert (raw.depth.sensor_width, raw.depth.sensor_height) == (1024, 1024)
    assert (raw.color.sensor_width, raw.color.sensor_height) == (4096, 3072)
    # JSON parameter order is cx, cy, fx, fy, k1..k6, codx, cody, p2, p1.
    assert raw.color.p2 == pytest.approx(-0.00012944525224156678)
    assert raw.color.p1 == pytest.approx(-0.00016178244550246745)
    T = raw.T_color_from_depth
    # Metres in the file (a ~32 mm baseline), color camera tilted ~5 degrees about x.
    np.testing.assert_allclose(T.t, [-0.0320834, -0.0022054, 0.0038837], atol=1e-6)
    np.testing.assert_allclose(T.R @ T.R.T, np.eye(3), atol=1e-6)
    tilt = np.degrees(np.arccos(T.R[1, 1]))
    assert 4.5 < tilt < 5.5


def test_real_calibration_mode_intrinsics(raw):
    c720 = raw.color.camera_model(ColorResolution.RES_720P)
    assert (c720.width, c720.height) == (1280, 720)
    assert c720.fx == pytest.approx(0.4779651165008545 * 1280)  # 611.795 px
    assert c720.fy == pytest.approx(0.6374239325523376 * 960)
    assert c720.cx == pytest.approx(0.4998471438884735 * 1280 - 0.5)
    assert c720.cy == pytest.approx(0.5066176056861877 * 960 - 120 - 0.5)
    assert c720.metric_radius == 1.7  # stored as 0: the SDK default applies
    d = raw.depth.camera_model(DepthMode.NFOV_UNBINNED)
    assert (d.width, d.height) == (640, 576)
    assert d.fx == pytest.approx(504.608, abs=1e-3)
    assert d.cx == pytest.approx(0.5129697918891907 * 1024 - 192 - 0.5)
    assert d.cy == pytest.approx(0.5169235467910767 * 1024 - 180 - 0.5)
    assert d.metric_radius == pytest.approx(1.74, abs=1e-6)
    binned = raw.depth.camera_model(DepthMode.NFOV_2X2BINNED)
    assert binned.fx == pytest.approx(d.fx / 2)
    assert binned.cx == pytest.approx((d.cx + 0.5) / 2 - 0.5)


@pytest.mark.parametrize("mode", ALL_MODES, ids=lambda m: m.value)
def test_every_mode_parses_with_sane_values(raw_json, mode):
    color_res = mode if isinstance(mode, ColorResolution) else ColorResolution.RES_1080P
    depth_mode = mode if isinstance(mode, DepthMode) else DepthMode.NFOV_UNBINNED
    cal = K4aCalibration.from_raw_json(raw_json, color_res, depth_mode)
    model = cal.color if isinstance(mode, ColorResolution) else cal.depth
    info = MODE_TABLE[mode]
    assert (model.width, model.height) == (info.width, info.height) == mode.size
    # Principal point near the image centre (the NFOV window sits ~30 rows off it), square
    # pixels, and the pinhole field of view across the image width of each kind of mode.
    assert abs(model.cx - model.width / 2) < 0.05 * model.width
    assert abs(model.cy - model.height / 2) < 0.12 * model.height
    assert model.fx == pytest.approx(model.fy, rel=2e-3)
    hfov = 2 * np.degrees(np.arctan(model.width / 2 / model.fx))
    low, high = (84, 94) if isinstance(mode, ColorResolution) else (60, 70) if "NFOV" in mode.value else (88, 94)
    assert low < hfov < high
    np.testing.assert_array_equal(model.K, [[model.fx, 0, model.cx], [0, model.fy, model.cy], [0, 0, 1]])


@pytest.mark.parametrize("mode", ALL_MODES, ids=lambda m: m.value)
def test_unproject_project_identity_over_field_of_view(raw, mode):
    model = _model(raw, mode)
    pixels = _sample_grid(model)
    rays, valid = model.unproject_to_rays(pixels)
    # The whole color image and the NFOV window are in the lens model's domain; the WFOV
    # sensor's corners lie outside its (circular) field of view.
    min_valid = 0.999 if isinstance(mode, ColorResolution) or "NFOV" in mode.value else 0.75
    assert valid.mean() > min_valid
    depth = np.linspace(0.3, 4.0, valid.size).reshape(valid.shape)
    points, pvalid = model.unproject(pixels, depth)
    np.testing.assert_array_equal(pvalid, valid)
    np.testing.assert_allclose(points[valid][:, 2], depth[valid])
    back, bvalid = model.project(points)
    assert bvalid[valid].all()
    err = np.linalg.norm(back - pixels, axis=-1)[valid]
    assert err.max() < 0.01


@pytest.mark.parametrize("mode", [ColorResolution.RES_1080P, DepthMode.NFOV_UNBINNED, DepthMode.WFOV_2X2BINNED])
def test_project_unproject_identity_for_points(raw, mode):
    model = _model(raw, mode)
    rng = np.random.default_rng(1)
    # Points in front of the camera whose projections land inside the image.
    pixels = rng.uniform([0, 0], [model.width - 1, model.height - 1], size=(5000, 2))
    rays, valid = model.unproject_to_rays(pixels)
    points = rays[valid] * rng.uniform(0.2, 5.0, size=(int(valid.sum()), 1))
    pix, pvalid = model.project(points, require_inside=True)
    assert pvalid.all()
    back, bvalid = model.unproject(pix, points[:, 2])
    assert bvalid.all()
    np.testing.assert_allclose(back, points, atol=1e-9)


def test_projection_matches_opencv_rational_model(raw):
    cv2 = pytest.importorskip("cv2")
    model = raw.color.camera_model(ColorResolution.RES_1080P)
    rng = np.random.default_rng(2)
    points = np.c_[rng.uniform(-0.6, 0.6, (2000, 2)), rng.uniform(0.8, 1.5, 2000)]
    ours, valid = model.project(points)
    assert valid.all()
    theirs, _ = cv2.projectPoints(points, np.zeros(3), np.zeros(3), model.K, model.distortion)
    np.testing.assert_allclose(ours, theirs[:, 0, :], atol=1e-6)


def test_behind_camera_and_outside_radius_are_invalid(raw):
    model = raw.depth.camera_model(DepthMode.WFOV_UNBINNED)
    pixels, valid = model.project(np.array([[0.0, 0.0, -1.0], [0.0, 0.0, 0.0], [3.0, 0.0, 1.0], [0.1, 0.0, 1.0]]))
    assert valid.tolist() == [False, False, False, True]
    assert pixels[0].tolist() == [0.0, 0.0]
    nfov = raw.depth.camera_model(DepthMode.NFOV_UNBINNED)
    _, valid = nfov.project(np.array([[1.0, 0.0, 1.0]]))
    _, inside = nfov.project(np.array([[1.0, 0.0, 1.0]]), require_inside=True)
    assert valid[0] and not inside[0]
    points, valid = model.unproject(np.array([[500.0, 500.0], [500.0, 500.0]]), np.array([1.0, 0.0]))
    assert valid.tolist() == [True, False]
    assert points[1].tolist() == [0.0, 0.0, 0.0]


def test_numpy_and_torch_agree(raw):
    model = raw.color.camera_model(ColorResolution.RES_720P)
    pixels = _sample_grid(model, 5000)
    rays_np, valid_np = model.unproject_to_rays(pixels)
    rays_t, valid_t = model.unproject_to_rays(torch.from_numpy(pixels))
    assert isinstance(rays_t, torch.Tensor) and rays_t.dtype == torch.float64
    np.testing.assert_array_equal(valid_t.numpy(), valid_np)
    np.testing.assert_allclose(rays_t.numpy(), rays_np, atol=1e-12)
    points = rays_np * 1.3
    pix_np, _ = model.project(points)
    pix_t, _ = model.project(torch.from_numpy(points).float())
    assert pix_t.dtype == torch.float32
    np.testing.assert_allclose(pix_t.numpy(), pix_np, atol=2e-3)
    pts_t, v_t = model.unproject(torch.from_numpy(pixels).float(), torch.full(pixels.shape[:-1], 1.3))
    assert pts_t.dtype == torch.float32 and v_t.all()
    np.testing.assert_allclose(pts_t.numpy(), points, atol=1e-6)
    # float32 numpy stays float32
    pix32, _ = model.project(points.astype(np.float32))
    assert pix32.dtype == np.float32


def test_rigid_transform(raw):
    T = raw.T_color_from_depth
    points = np.random.default_rng(3).normal(size=(10, 3))
    # The device stores R to float32 precision, so R.T inverts it to ~1e-7.
    np.testing.assert_allclose(T.inverse().apply(T.apply(points)), points, atol=1e-6)
    assert T.compose(T.inverse()).allclose(RigidTransform.identity(), atol=1e-6)
    np.testing.assert_allclose((T @ T).apply(points), T.apply(T.apply(points)), atol=1e-12)
    np.testing.assert_allclose(T.apply(torch.from_numpy(points)).numpy(), T.apply(points), atol=1e-12)
    assert RigidTransform.from_matrix(T.as_matrix()) == T
    with pytest.raises(ValueError, match=r"shape \(3, 3\)"):
        RigidTransform(np.eye(2), np.zeros(3))


# -- builder -------------------------------------------------------------------------------------


def test_builder_round_trip(raw):
    assert parse_raw_calibration(build_raw_calibration_json(raw)) == raw
    synthetic = synthetic_raw_calibration("000123456789")
    text = synthetic.to_json()
    assert parse_raw_calibration(text) == synthetic
    assert parse_raw_calibration(text.decode() + "\x00") == synthetic  # device blobs end in NUL
    doc = json.loads(text)["CalibrationInformation"]
    assert [c["Location"] for c in doc["Cameras"]] == ["CALIBRATION_CameraLocationD0", "CALIBRATION_CameraLocationPV0"]
    assert {s["SensorType"] for s in doc["InertialSensors"]} == {
        "CALIBRATION_InertialSensorType_Gyro",
        "CALIBRATION_InertialSensorType_Accelerometer",
    }
    cal = K4aCalibration.from_raw_json(text, "1080P", "NFOV_UNBINNED")
    assert cal == synthetic.calibration(ColorResolution.RES_1080P, DepthMode.NFOV_UNBINNED)
    assert cal.serial_number == "000123456789"
    assert parse_raw_calibration(cal.to_raw_json()) == synthetic


def test_synthetic_pinhole_and_custom_extrinsics():
    T = RigidTransform(np.eye(3), [-0.05, 0.0, 0.0])
    synthetic = synthetic_raw_calibration(T_color_from_depth=T, distortion=False)
    cal = synthetic.calibration("720P", "WFOV_2X2BINNED")
    assert not cal.color.has_distortion and not cal.depth.has_distortion
    assert cal.T_color_from_depth.allclose(T)


@pytest.mark.parametrize("mode", [ColorResolution.RES_1080P, ColorResolution.RES_3072P, DepthMode.NFOV_2X2BINNED])
def test_raw_camera_from_pixel_intrinsics_inverts_mode_scaling(mode):
    camera = RawCamera.from_pixel_intrinsics(mode, 900.5, 901.0, 955.25, 540.75, k1=0.1, p2=1e-4)
    model = camera.camera_model(mode)
    assert (model.fx, model.fy, model.cx, model.cy) == pytest.approx((900.5, 901.0, 955.25, 540.75), abs=1e-9)
    assert (model.k1, model.p2, model.k2) == (0.1, 1e-4, 0.0)
    with pytest.raises(ValueError, match="unknown distortion"):
        RawCamera.from_pixel_intrinsics(mode, 1, 1, 0, 0, k9=1.0)


def test_legacy_16_9_color_calibration_matches_4_3(raw):
    c = raw.color
    legacy = RawCamera(
        cx=c.cx, cy=(c.cy * 3072 - 384) / 2304, fx=c.fx, fy=c.fy * 3072 / 2304,
        k1=c.k1, k2=c.k2, k3=c.k3, k4=c.k4, k5=c.k5, k6=c.k6, p1=c.p1, p2=c.p2,
        sensor_width=4096, sensor_height=2304,
    )
    for res in ColorResolution:
        a, b = legacy.camera_model(res), c.camera_model(res)
        assert (a.fx, a.fy, a.cx, a.cy) == pytest.approx((b.fx, b.fy, b.cx, b.cy), rel=1e-12)


# -- enums and errors ----------------------------------------------------------------------------


def test_mode_parsing():
    assert ColorResolution.parse("MJPG_1080P") is ColorResolution.RES_1080P
    assert ColorResolution.parse("k4a_color_resolution_720p") is ColorResolution.RES_720P
    assert ColorResolution.parse(1536) is ColorResolution.RES_1536P
    assert ColorResolution.from_k4a_id(6) is ColorResolution.RES_3072P
    assert ColorResolution.RES_720P.k4a_id == 1
    assert DepthMode.parse("K4A_DEPTH_MODE_WFOV_2X2BINNED") is DepthMode.WFOV_2X2BINNED
    assert DepthMode.parse("nfov_unbinned") is DepthMode.NFOV_UNBINNED
    assert DepthMode.PASSIVE_IR.k4a_id == 5 and DepthMode.from_k4a_id(2) is DepthMode.NFOV_UNBINNED
    with pytest.raises(ValueError, match="unknown Azure Kinect color resolution"):
        ColorResolution.parse("OFF")
    with pytest.raises(ValueError, match="unknown Azure Kinect color resolution height"):
        ColorResolution.parse(1000)
    with pytest.raises(ValueError, match="unknown Azure Kinect depth mode"):
        DepthMode.parse("OFF")
    with pytest.raises(ValueError, match="0 is OFF"):
        DepthMode.from_k4a_id(0)


def _doc(raw_json: bytes) -> dict:
    return json.loads(raw_json)


def test_bad_json_errors(raw_json):
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_raw_calibration(b"{not json")
    with pytest.raises(ValueError, match="has no 'CalibrationInformation'"):
        parse_raw_calibration("{}")
    doc = _doc(raw_json)
    doc["CalibrationInformation"]["Cameras"] = doc["CalibrationInformation"]["Cameras"][:1]
    with pytest.raises(ValueError, match="no color camera"):
        parse_raw_calibration(json.dumps(doc))
    doc = _doc(raw_json)
    del doc["CalibrationInformation"]["Cameras"][0]["Intrinsics"]["ModelParameters"]
    with pytest.raises(ValueError, match="'ModelParameters'"):
        parse_raw_calibration(json.dumps(doc))
    doc = _doc(raw_json)
    doc["CalibrationInformation"]["Cameras"][1]["Intrinsics"]["ModelType"] = "CALIBRATION_LensDistortionModelTheta"
    with pytest.raises(ValueError, match="only Brown-Conrady"):
        parse_raw_calibration(json.dumps(doc))
    doc = _doc(raw_json)
    doc["CalibrationInformation"]["Cameras"][1]["Rt"]["Translation"] = [-32.08, -2.2, 3.9]
    with pytest.raises(ValueError, match="millimetres"):
        parse_raw_calibration(json.dumps(doc))
    doc = _doc(raw_json)
    doc["CalibrationInformation"]["Cameras"][1]["Intrinsics"]["ModelParameters"][2] = "x"
    with pytest.raises(ValueError, match="non-number"):
        parse_raw_calibration(json.dumps(doc))
    doc = _doc(raw_json)
    doc["CalibrationInformation"]["Cameras"][0]["SensorWidth"] = 640
    raw = parse_raw_calibration(json.dumps(doc))
    with pytest.raises(ValueError, match="1024x1024"):
        raw.calibration("720P", "NFOV_UNBINNED")
    with pytest.raises(ValueError, match="unknown Azure Kinect depth mode"):
        K4aCalibration.from_raw_json(raw_json, "720P", "NFOV_BINNED")


def test_read_raw_calibration_file_errors(tmp_path, k4a_sample_dir):
    assert read_raw_calibration(k4a_sample_dir / "calibration.json").serial_number == "001514394512"
    bad = tmp_path / "calibration.json"
    bad.write_text("[1, 2")
    with pytest.raises(InputError, match=r"calibration.json: Kinect calibration is not valid JSON"):
        read_raw_calibration(bad)
    with pytest.raises(InputError, match="cannot read"):
        read_raw_calibration(tmp_path / "missing.json")


def test_torch_projection_is_differentiable(raw):
    # The fitter optimizes through the lens model: gradients must match finite differences.
    model = raw.color.camera_model(ColorResolution.RES_1080P)
    points = torch.tensor([[0.1, -0.05, 0.8], [0.0, 0.0, 1.0], [-0.3, 0.2, 0.6]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p: model.project(p)[0], (points,))
    T = raw.T_color_from_depth
    assert torch.autograd.gradcheck(lambda p: model.project(T.apply(p))[0], (points,))


def test_large_unprojections_run_in_batches(raw, monkeypatch):
    import mmface4d_stream.k4a.camera_model as calibration

    model = raw.depth.camera_model(DepthMode.WFOV_2X2BINNED)
    pixels = _sample_grid(model, 5000)
    whole = model.unproject_to_rays(pixels)
    monkeypatch.setattr(calibration, "_UNPROJECT_CHUNK", 999)
    batched = model.unproject_to_rays(pixels)
    assert batched.points.shape == whole.points.shape
    np.testing.assert_array_equal(batched.valid, whole.valid)
    np.testing.assert_array_equal(batched.points, whole.points)
