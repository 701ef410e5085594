"""The fitter's lens model is `k4a.camera_model.CameraModel`'s: its projections (the host view
`FitCamera`, the batched copy the solver runs on the device, `depth_term.CameraBatch.project`, and
the rasterizer's, `raster.clip_coordinates`) and its undistortion agree with `CameraModel` over the valid field of view of every mode of the
real device calibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmface4d_stream.fit.camera_terms import FitCamera
from mmface4d_stream.fit.frame_prep import PreparedCamera, collate_cameras
from mmface4d_stream.fit.raster import clip_coordinates
from mmface4d_stream.k4a.modes import ColorResolution, DepthMode
from mmface4d_stream.k4a.raw_calibration import read_raw_calibration

ALL_MODES = list(ColorResolution) + list(DepthMode)


@pytest.fixture(scope="module")
def raw(k4a_sample_dir):
    return read_raw_calibration(k4a_sample_dir / "calibration.json")


def _valid_field(model, n: int = 40):
    """Pixels on an n x n grid over the image that the lens model unprojects, their rays, and
    camera-frame points on them at 0.4 to 1.5 m."""
    u, v = np.meshgrid(np.linspace(0, model.width - 1, n), np.linspace(0, model.height - 1, n))
    uv = np.stack([u.ravel(), v.ravel()], 1)
    rays, valid = model.unproject_to_rays(uv)
    depth = np.random.default_rng(0).uniform(0.4, 1.5, len(uv))
    return uv[valid], rays[valid], rays[valid] * depth[valid, None]


@pytest.mark.parametrize("mode", ALL_MODES, ids=lambda m: m.value)
def test_fitter_projection_is_the_camera_models(raw, mode):
    model = raw.color.camera_model(mode) if isinstance(mode, ColorResolution) else raw.depth.camera_model(mode)
    cam = FitCamera.of(model)
    uv, rays, points = _valid_field(model)
    assert len(uv) > 0.5 * 40 * 40
    expected = model.project(points).pixels
    np.testing.assert_allclose(expected, uv, atol=1e-3)
    host = cam.project_torch(torch.tensor(points, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(host, expected, atol=1e-9)
    # The solver's batched copy, float32 as it runs on the device.
    prepared = PreparedCamera(0, cam, np.eye(3), np.zeros(3), np.zeros((1, 2)), np.zeros(1), 0, None)
    batch, _, _ = collate_cameras([[prepared]], 1, "cpu")
    u, v = batch.project(torch.tensor(points, dtype=torch.float32)[None, None])
    np.testing.assert_allclose(np.stack([u[0, 0].numpy(), v[0, 0].numpy()], 1), expected, atol=5e-3 * max(1, model.width / 1000))
    # The rasterizer's clip coordinates of the whole image, back to pixels.
    w, h = model.width, model.height
    clip = clip_coordinates(torch.tensor(points, dtype=torch.float32)[None], [cam], [(0, 0, w, h)], h, w)[0].double()
    ndc = clip[:, :2] / clip[:, 3:]
    raster_uv = (ndc.numpy() + 1) / 2 * [w, h] - 0.5
    np.testing.assert_allclose(raster_uv, expected, atol=5e-3 * max(1, w / 1000))
    # The fitter's undistortion is the camera model's unprojection.
    np.testing.assert_allclose(cam.undistort(uv), rays[:, :2], atol=1e-9)


def test_finite_projection_beyond_the_metric_radius(raw):
    """Where CameraModel marks points invalid, the fitter's (finite) projection stays finite and
    differentiable, with the radial factor held at the metric radius; inside it both agree."""
    model = raw.depth.camera_model(DepthMode.WFOV_UNBINNED)
    r = model.metric_radius
    xy = torch.tensor([[0.3 * r, 0.1], [1.2 * r, 0.0], [0.0, 2.0 * r]], dtype=torch.float64, requires_grad=True)
    points = torch.cat([xy, torch.ones(3, 1, dtype=torch.float64)], 1)
    plain = model.project(points.detach())
    finite = model.project(points, finite=True)
    assert plain.valid.tolist() == [True, False, False] and finite.valid.tolist() == [True, False, False]
    np.testing.assert_allclose(finite.pixels[0].detach().numpy(), plain.pixels[0].numpy(), atol=1e-9)
    assert torch.isfinite(finite.pixels).all()
    finite.pixels.sum().backward()
    assert torch.isfinite(xy.grad).all()
    # Beyond the radius the radial factor is the one on the radius.
    k = model
    r2 = r * r
    radial = (1 + r2 * (k.k1 + r2 * (k.k2 + r2 * k.k3))) / (1 + r2 * (k.k4 + r2 * (k.k5 + r2 * k.k6)))
    x = 1.2 * r
    expected_u = (x * radial + (x * x + 2 * x * x) * k.p2) * k.fx + k.cx
    assert abs(float(finite.pixels[1, 0].detach()) - expected_u) < 1e-6


def test_fit_camera_refuses_lens_models_it_does_not_implement(raw):
    import dataclasses

    model = raw.color.camera_model(ColorResolution.RES_1080P)
    with pytest.raises(ValueError, match="codx"):
        FitCamera.of(dataclasses.replace(model, codx=0.01))
    with pytest.raises(ValueError, match="CameraModel"):
        FitCamera.of({"fx": 500.0})
