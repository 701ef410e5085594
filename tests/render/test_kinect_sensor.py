"""The simulated Kinect depth sensor: noise growing with z², silhouette dropouts and flying pixels, grazing dropouts."""

from __future__ import annotations

import numpy as np
import pytest

from mmface4d_stream.k4a.synthetic_calibration import synthetic_raw_calibration
from mmface4d_stream.render.kinect_sensor import DepthNoise, kinect_depth


def test_kinect_depth_noise_model():
    cam = synthetic_raw_calibration().calibration("720P", "NFOV_UNBINNED").depth
    rays = cam.ray_map()
    H, W = rays.shape[:2]
    # A fronto-parallel wall at 2 m with a box at 0.7 m in front of it, and one tilted strip.
    depth = np.full((H, W), 2.0, np.float32)
    depth[200:380, 220:420] = 0.7
    rng = np.random.default_rng(0)
    out = kinect_depth(depth, rays, rng, DepthNoise())
    assert out.dtype == np.uint16
    box = out[220:360, 240:400].astype(np.float64)
    assert np.std(box[box > 0] - 700) == pytest.approx(1.5, rel=0.2)
    wall = out[20:150, 20:150].astype(np.float64)
    assert np.std(wall[wall > 0] - 2000) == pytest.approx(1.5 * (2.0 / 0.7) ** 2, rel=0.2)
    # At the box's silhouette: some pixels dropped, some flying between the two surfaces.
    ring = np.zeros((H, W), bool)
    ring[199:202, 220:420] = True
    ring[378:381, 220:420] = True
    edge_vals = out[ring]
    assert (edge_vals == 0).mean() > 0.05
    flying = (edge_vals > 720) & (edge_vals < 1980)
    assert flying.mean() > 0.05
    # Grazing incidence: the plane z = 1 + tan(85 deg) x, seen along rays t (x, y, 1), z = 1 / (1 - 11.43 x).
    denom = 1.0 - np.tan(np.radians(85.0)) * rays[..., 0]
    steep = np.where(denom > 0, 1.0 / np.maximum(denom, 1e-6), 0.0)
    steep = np.where((steep > 0.4) & (steep < 3.0), steep, 0.0).astype(np.float32)
    steep_out = kinect_depth(steep, rays, np.random.default_rng(1), DepthNoise())
    region = steep > 0
    region[:, :5] = region[:, -5:] = False
    assert region.sum() > 1000
    assert (steep_out[region] == 0).mean() > 0.5
    exact = kinect_depth(depth, rays, rng, DepthNoise(enabled=False))
    assert exact[300, 300] == 700 and exact[10, 10] == 2000
