"""Point-set geometry of rig calibration: depth lifting, robust Kabsch, pose averaging."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mmface4d_stream.fit.rig_align import (
    average_transforms,
    kabsch_transform,
    landmarks_to_points,
    robust_rigid_alignment,
    rotation_angle_deg,
    transform_points,
)
from mmface4d_stream.geometry import RigidTransform, so3_exp


def rot(axis, deg):
    """Rotation by `deg` degrees about `axis` (3,), (3, 3)."""
    a = np.asarray(axis, dtype=np.float64)
    return so3_exp(a / np.linalg.norm(a) * math.radians(deg))


def _matrix(rotation, translation) -> np.ndarray:
    return RigidTransform(rotation, translation).as_matrix()


def test_kabsch_and_robust_alignment():
    rng = np.random.default_rng(1)
    t_true = _matrix(rot([0.3, -1.0, 0.2], 40.0), [0.3, -0.05, 0.12])
    src = rng.normal(0, 0.05, (200, 3)) + [0, 0, 0.8]
    dst = transform_points(t_true, src)
    np.testing.assert_allclose(kabsch_transform(src, dst), t_true, atol=1e-12)

    noisy = dst + rng.normal(0, 0.0005, dst.shape)
    outliers = rng.random(200) < 0.35
    noisy[outliers] += rng.uniform(-0.05, 0.05, (outliers.sum(), 3))
    src_holes = src.copy()
    src_holes[:5] = np.nan
    fit = robust_rigid_alignment(src_holes, noisy)
    deg = rotation_angle_deg((np.linalg.inv(t_true) @ fit.T)[:3, :3])
    moved = np.linalg.norm(transform_points(fit.T, src) - transform_points(t_true, src), axis=1)
    assert moved.max() < 0.5e-3 and deg < 0.2
    far = np.linalg.norm(transform_points(t_true, src) - noisy, axis=1) > 0.01
    assert not fit.inliers[:5].any()
    assert not (fit.inliers & far).any()
    assert fit.inliers.sum() > 0.9 * (~far[5:]).sum()
    assert 0.4 < fit.rmse_mm < 1.2
    with pytest.raises(ValueError, match="at least 3"):
        robust_rigid_alignment(src[:2], dst[:2])

def test_landmarks_to_points_reads_foreground_depth_through_holes():
    depth = np.full((100, 120), 2000, np.uint16)
    depth[:, :60] = 800  # a foreground edge at x = 60
    depth[40:43, 20:23] = 0  # a hole under one landmark
    k = np.array([[500.0, 0, 60.0], [0, 500.0, 50.0], [0, 0, 1]])
    pts = np.array([[21.0, 41.0], [59.0, 10.0], [90.0, 80.0], [np.nan, np.nan], [500.0, 10.0], [21.2, 41.4]])
    xyz = landmarks_to_points(pts, depth, k, window_px=2)
    np.testing.assert_allclose(xyz[0], [(21 - 60) / 500 * 0.8, (41 - 50) / 500 * 0.8, 0.8])
    assert xyz[1, 2] == pytest.approx(0.8)  # at the silhouette: foreground, not background
    assert xyz[2, 2] == pytest.approx(2.0)
    assert np.isnan(xyz[3]).all() and np.isnan(xyz[4]).all()
    # Unprojection uses the sub-pixel landmark position, depth from its pixel window.
    np.testing.assert_allclose(xyz[5, :2], [(21.2 - 60) / 500 * 0.8, (41.4 - 50) / 500 * 0.8])
    depth[:] = 0
    assert np.isnan(landmarks_to_points(pts, depth, k)).all()
    with pytest.raises(ValueError, match="uint16"):
        landmarks_to_points(pts, depth.astype(np.float32), k)

def test_average_transforms():
    a = _matrix(rot([0, 1, 0], 10.0), [0.1, 0, 0])
    b = _matrix(rot([0, 1, 0], 12.0), [0.3, 0, 0])
    m = average_transforms([a, b])
    np.testing.assert_allclose(m, _matrix(rot([0, 1, 0], 11.0), [0.2, 0, 0]), atol=1e-9)

def test_landmarks_to_points_inverts_a_kinect_lens_model():
    from mmface4d_stream.k4a.camera_model import CameraModel

    camera = CameraModel(1280, 720, 605.0, 604.0, 638.5, 365.2, k1=0.45, k2=-2.6, k3=1.6, k4=0.33,
                         k5=-2.4, k6=1.5, p1=6e-4, p2=-2e-4)
    rng = np.random.default_rng(3)
    points = np.stack([rng.uniform(-0.5, 0.5, 50), rng.uniform(-0.3, 0.3, 50), np.full(50, 1.2)], axis=1)
    pixels = np.asarray(camera.project(points).pixels)
    depth = np.full((720, 1280), 1200, np.uint16)
    lifted = landmarks_to_points(pixels, depth, camera)
    np.testing.assert_allclose(lifted, points, atol=1e-6)
    # The pinhole reading of the same pixels is millimetres off away from the image centre.
    pinhole = landmarks_to_points(pixels, depth, camera.K)
    assert np.abs(pinhole - points).max() > 0.005
