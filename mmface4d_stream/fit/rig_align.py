"""Point sets for rig calibration: 3D landmarks and face surfaces from depth, robust rigid alignment.

The geometry `fit.rig.RigCalibrator` is built from, free of any rig or file type:

- `landmarks_to_points` lifts pixel landmarks to 3D with a registered depth map (median of the
  foreground depths in a small window), `face_surface_points` the dense face surface inside the
  landmarks' hull; `normalized_rays` inverts a pinhole or a `k4a.camera_model.CameraModel`.
- `robust_rigid_alignment`: Kabsch's SVD solution (Kabsch 1976; Umeyama 1991 without scale; the
  one implementation is `geometry.kabsch`, `kabsch_transform` only returns it as a 4×4 matrix) with
  RANSAC over 3-point samples, then iterative trimming of residual outliers.
- `refine_point_to_plane`: point-to-plane ICP (Chen & Medioni 1992; Open3D's
  `o3d.pipelines.registration`), coarse to fine; `average_transforms`: chordal mean of poses.

Frames: OpenCV camera frames (x right, y down, z forward) in metres; 4×4 transforms map
column points, X_dst = T[:3,:3] X_src + T[:3,3]. Pixels: integer coordinates are pixel centres
(the Kinect intrinsics' convention).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from mmface4d_stream.geometry import RigidTransform, kabsch


# --------------------------------------------------------------------------------------------
# 3D points from landmarks and depth


def pinhole_parameters(intrinsics: Any) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) in pixels from a 3×3 matrix or an object with fx, fy, cx, cy attributes."""
    if isinstance(intrinsics, np.ndarray) or isinstance(intrinsics, (list, tuple)):
        k = np.asarray(intrinsics, dtype=np.float64)
        if k.shape != (3, 3):
            raise ValueError(f"an intrinsic matrix must be 3x3, got shape {k.shape}")
        return float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2])
    try:
        return float(intrinsics.fx), float(intrinsics.fy), float(intrinsics.cx), float(intrinsics.cy)
    except AttributeError as exc:
        raise ValueError(
            f"intrinsics must be a 3x3 matrix or have fx, fy, cx, cy attributes, got {type(intrinsics).__name__}"
        ) from exc


def normalized_rays(intrinsics: Any, pixels: np.ndarray) -> np.ndarray:
    """(N, 2) pixels -> (N, 2) normalized undistorted ray coordinates (X/Z, Y/Z).

    A camera with a lens model (`k4a.camera_model.CameraModel` with `has_distortion`) is inverted
    with its own `unproject_to_rays` (NaN where the model is not valid); anything else is a pinhole.
    """
    pixels = np.asarray(pixels, dtype=np.float64)
    if getattr(intrinsics, "has_distortion", False) and hasattr(intrinsics, "unproject_to_rays"):
        rays, valid = intrinsics.unproject_to_rays(pixels)
        xy = np.array(rays, dtype=np.float64)[..., :2]
        xy[~np.asarray(valid)] = np.nan
        return xy
    fx, fy, cx, cy = pinhole_parameters(intrinsics)
    return np.stack([(pixels[..., 0] - cx) / fx, (pixels[..., 1] - cy) / fy], axis=-1)


def landmarks_to_points(
    points_px: np.ndarray,
    depth_mm: np.ndarray,
    intrinsics: Any,
    window_px: int = 2,
    foreground_mm: float = 30.0,
    min_valid: int = 3,
) -> np.ndarray:
    """Lift pixel landmarks to 3D camera points with a registered depth map.

    points_px: (N, 2) float pixel coordinates (x, y), pixel centres at integers; NaN rows allowed.
    depth_mm: (H, W) uint16 millimetres registered to this colour camera, 0 = no measurement.
    intrinsics: the colour camera: a 3×3 pinhole matrix, an object with fx, fy, cx, cy, or a
        `k4a.camera_model.CameraModel` (its lens distortion is inverted).
    window_px: depths are read from the (2·window_px + 1)² window around each landmark; the depth is
        the median of valid values within `foreground_mm` of the window's nearest one (at the face's
        silhouette the window also holds background).
    Returns (N, 3) float64 metres in the camera frame; NaN rows where the landmark is missing, off
    the image, or has fewer than `min_valid` valid depths in its window.
    """
    pts = np.asarray(points_px, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points_px must be (N, 2), got shape {pts.shape}")
    depth = np.asarray(depth_mm)
    if depth.ndim != 2 or depth.dtype != np.uint16:
        raise ValueError(f"depth_mm must be a uint16 (H, W) array in millimetres, got {depth.dtype} {depth.shape}")
    pinhole_parameters(intrinsics)
    h, w = depth.shape
    out = np.full((len(pts), 3), np.nan)
    finite = np.isfinite(pts).all(axis=1)
    ui = np.full(len(pts), -1, dtype=np.int64)
    vi = np.full(len(pts), -1, dtype=np.int64)
    ui[finite] = np.round(pts[finite, 0]).astype(np.int64)
    vi[finite] = np.round(pts[finite, 1]).astype(np.int64)
    inside = finite & (ui >= 0) & (ui < w) & (vi >= 0) & (vi < h)
    if not inside.any():
        return out
    offsets = np.arange(-window_px, window_px + 1)
    du, dv = np.meshgrid(offsets, offsets)
    uu = np.clip(ui[inside, None] + du.ravel()[None, :], 0, w - 1)
    vv = np.clip(vi[inside, None] + dv.ravel()[None, :], 0, h - 1)
    samples = depth[vv, uu].astype(np.float64)  # (n, window²)
    samples[samples == 0] = np.nan
    # Windows entirely over holes give all-NaN slices; those landmarks become NaN below.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        nearest = np.nanmin(samples, axis=1, keepdims=True)
        samples[samples > nearest + foreground_mm] = np.nan
        z_mm = np.nanmedian(samples, axis=1)
    enough = np.sum(np.isfinite(samples), axis=1) >= min_valid
    z = np.where(enough, z_mm / 1000.0, np.nan)
    idx = np.nonzero(inside)[0]
    xy = normalized_rays(intrinsics, pts[idx])
    out[idx, :2] = xy * z[:, None]
    out[idx, 2] = z
    return out


def face_surface_points(
    depth_mm: np.ndarray,
    points_px: np.ndarray,
    intrinsics: Any,
    landmarks_3d: np.ndarray | None = None,
    band_mm: float = 120.0,
    stride_px: int = 1,
) -> np.ndarray:
    """Dense face surface from a depth map: valid pixels inside the landmarks' convex hull.

    depth_mm: (H, W) uint16 mm registered to the colour camera. points_px: (N, 2) face landmarks in
    pixels (NaN rows ignored). landmarks_3d: optional (N, 3) metres from `landmarks_to_points`;
    when given, depths further than `band_mm` from their median are dropped (background seen
    through the hull's corners, hair). Returns (M, 3) float64 metres in the camera frame.
    """
    from skimage.draw import polygon
    from scipy.spatial import ConvexHull

    pts = np.asarray(points_px, dtype=np.float64)
    pts = pts[np.isfinite(pts).all(axis=1)]
    if len(pts) < 3:
        return np.zeros((0, 3))
    depth = np.asarray(depth_mm)
    h, w = depth.shape
    hull = pts[ConvexHull(pts).vertices]
    rows, cols = polygon(hull[:, 1], hull[:, 0], shape=(h, w))
    if stride_px > 1:
        keep = (rows % stride_px == 0) & (cols % stride_px == 0)
        rows, cols = rows[keep], cols[keep]
    z_mm = depth[rows, cols].astype(np.float64)
    ok = z_mm > 0
    if landmarks_3d is not None:
        zl = np.asarray(landmarks_3d)[:, 2]
        zl = zl[np.isfinite(zl)]
        if len(zl):
            ok &= np.abs(z_mm - 1000.0 * np.median(zl)) <= band_mm
    z = z_mm[ok] / 1000.0
    xy = normalized_rays(intrinsics, np.stack([cols[ok], rows[ok]], axis=1).astype(np.float64))
    points = np.concatenate([xy * z[:, None], z[:, None]], axis=1)
    return points[np.isfinite(points).all(axis=1)]


# --------------------------------------------------------------------------------------------
# Rigid alignment


def transform_points(t: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4×4 transform to (N, 3) points."""
    return np.asarray(points) @ t[:3, :3].T + t[:3, 3]


def kabsch_transform(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Rigid 4×4 T minimising Σ w_i ||T src_i - dst_i||² (`geometry.kabsch` as a matrix)."""
    return RigidTransform(*kabsch(src, dst, weights)).as_matrix()


class RobustAlignment(NamedTuple):
    """Outcome of `robust_rigid_alignment`.

    T: (4, 4) src -> dst. inliers: (M,) bool over the input pairs. rmse_mm: RMS inlier residual in
    millimetres. median_mm: median residual of all finite pairs in millimetres.
    """

    T: np.ndarray
    inliers: np.ndarray
    rmse_mm: float
    median_mm: float


def robust_rigid_alignment(
    src: np.ndarray,
    dst: np.ndarray,
    inlier_mm: float = 10.0,
    iterations: int = 300,
    seed: int = 0,
) -> RobustAlignment:
    """Rigid src -> dst alignment that ignores outlier pairs: RANSAC, then iterative trimming.

    src, dst: (M, 3) metres; rows with NaN are ignored. RANSAC draws 3 pairs, fits Kabsch and keeps
    the hypothesis with the most pairs within `inlier_mm`; the fit is then repeated on the inliers
    while the threshold tightens to max(3σ, 1 mm) (σ from the inliers' median residual), at most
    `inlier_mm`. Raises ValueError with fewer than 3 finite pairs or no consistent hypothesis.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3:
        raise ValueError(f"src and dst must be (M, 3) of equal shape, got {src.shape} and {dst.shape}")
    finite = np.isfinite(src).all(axis=1) & np.isfinite(dst).all(axis=1)
    idx = np.nonzero(finite)[0]
    if len(idx) < 3:
        raise ValueError(f"need at least 3 finite point pairs to align, got {len(idx)}")
    s, d = src[idx], dst[idx]
    thr = inlier_mm / 1000.0
    rng = np.random.default_rng(seed)
    best_count, best = -1, None
    for _ in range(iterations):
        pick = rng.choice(len(idx), size=3, replace=False)
        a = s[pick]
        # Nearly collinear samples give an ill-defined rotation.
        if np.linalg.norm(np.cross(a[1] - a[0], a[2] - a[0])) < 1e-6:
            continue
        t = kabsch_transform(a, d[pick])
        count = int((np.linalg.norm(transform_points(t, s) - d, axis=1) < thr).sum())
        if count > best_count:
            best_count, best = count, t
    if best is None or best_count < 3:
        raise ValueError("no rigid hypothesis explains at least 3 point pairs")
    inl = np.linalg.norm(transform_points(best, s) - d, axis=1) < thr
    t = best
    for _ in range(20):
        t = kabsch_transform(s[inl], d[inl])
        res = np.linalg.norm(transform_points(t, s) - d, axis=1)
        sigma = 1.4826 * float(np.median(res[inl]))
        new = res < min(thr, max(3.0 * sigma, 1e-3))
        if new.sum() < 3 or np.array_equal(new, inl):
            break
        inl = new
    res = np.linalg.norm(transform_points(t, s) - d, axis=1)
    inliers = np.zeros(len(src), dtype=bool)
    inliers[idx[inl]] = True
    return RobustAlignment(
        T=t,
        inliers=inliers,
        rmse_mm=float(np.sqrt(np.mean(res[inl] ** 2)) * 1000.0),
        median_mm=float(np.median(res) * 1000.0),
    )


class IcpRefinement(NamedTuple):
    """Outcome of `refine_point_to_plane`.

    T: (4, 4) source -> target. rmse_mm: Open3D's inlier RMSE of the last stage, millimetres.
    fitness: fraction of source points with a target neighbour within the last stage's distance.
    """

    T: np.ndarray
    rmse_mm: float
    fitness: float


def refine_point_to_plane(
    source_points: np.ndarray,
    target_points: np.ndarray,
    T_init: np.ndarray,
    distances_m: Sequence[float] = (0.010, 0.005, 0.003),
    voxel_m: float = 0.002,
    max_iterations: int = 30,
) -> IcpRefinement:
    """Point-to-plane ICP (Open3D) from `T_init`, coarse-to-fine over correspondence distances.

    source_points: (M, 3) metres in the source camera; target_points: (K, 3) metres in the target
    camera, whose normals are estimated and turned towards the target camera's origin. Both clouds
    are voxel-downsampled to `voxel_m`. A Tukey kernel at each stage's distance down-weights pairs
    from surfaces that only one camera sees.
    """
    import open3d as o3d

    reg = o3d.pipelines.registration
    if len(source_points) < 10 or len(target_points) < 10:
        raise ValueError("point-to-plane ICP needs at least 10 points in each cloud")
    src = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(source_points, dtype=np.float64)))
    dst = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(target_points, dtype=np.float64)))
    src = src.voxel_down_sample(voxel_m)
    dst = dst.voxel_down_sample(voxel_m)
    dst.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=4.0 * voxel_m, max_nn=30))
    dst.orient_normals_towards_camera_location(np.zeros(3))
    t = np.asarray(T_init, dtype=np.float64).copy()
    result = None
    for dist in distances_m:
        estimation = reg.TransformationEstimationPointToPlane(reg.TukeyLoss(k=dist))
        result = reg.registration_icp(
            src, dst, dist, t, estimation, reg.ICPConvergenceCriteria(max_iteration=max_iterations)
        )
        t = np.asarray(result.transformation, dtype=np.float64)
    return IcpRefinement(T=t, rmse_mm=float(result.inlier_rmse) * 1000.0, fitness=float(result.fitness))


def rotation_angle_deg(r: np.ndarray) -> float:
    """Angle of a rotation matrix in degrees."""
    c = (np.trace(np.asarray(r)[:3, :3]) - 1.0) / 2.0
    return math.degrees(math.acos(min(1.0, max(-1.0, c))))


def average_transforms(transforms: Sequence[np.ndarray]) -> np.ndarray:
    """Mean of rigid transforms: chordal L2 mean rotation (SVD projection), mean translation."""
    ts = np.asarray(transforms, dtype=np.float64)
    u, _, vt = np.linalg.svd(ts[:, :3, :3].sum(axis=0))
    sign = np.ones(3)
    sign[2] = np.sign(np.linalg.det(u @ vt)) or 1.0
    return RigidTransform((u * sign) @ vt, ts[:, :3, 3].mean(axis=0)).as_matrix()
