"""Multi-camera rig calibration from the face itself: every camera's pose in the reference camera.

The MMFace4D rig (three Azure Kinects around the subject) has no calibration target; as upstream,
the extrinsics come from the face seen by all cameras at once:

1. Per camera and frame, the FaceMesh landmarks (pixels) are lifted to 3D with the depth map
   registered to that colour camera and its pinhole intrinsics. Each landmark takes the median of
   the foreground depths in a small pixel window, so holes and silhouette edges do not matter.
2. For every camera c, the landmark pairs (camera c, reference camera) of all good frames are pooled
   (the head may move between frames: the rig does not) and aligned rigidly, Kabsch's SVD solution
   (Kabsch 1976; Umeyama 1991 without scale), with RANSAC over 3-point samples and then iterative
   trimming of residual outliers (detector failures, depth holes).
3. The result is refined by point-to-plane ICP (Chen & Medioni 1992; Open3D's
   `o3d.pipelines.registration`) between the dense face surfaces of the same frame in camera c and
   the reference camera, once per frame; the per-frame results are averaged.

`RigCalibration` is saved as JSON and is reusable for all sequences of the same rig (cameras are
matched by serial number). Frames: OpenCV camera frames (x right, y down, z forward) in metres;
`T_ref_from_cam` maps a point in camera c to the reference camera: X_ref = T[:3,:3] X_c + T[:3,3].
Pixels: integer coordinates are pixel centres (the Kinect intrinsics' convention).
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from mmface4d_stream.errors import InputError
from mmface4d_stream.geometry import RigidTransform, kabsch

logger = logging.getLogger(__name__)

RIG_SCHEMA = "mmface4d.rig/1"
N_MESH_POINTS = 468
"""FaceMesh points used for 3D landmarks (the 10 iris points sit on a reflective surface)."""


# --------------------------------------------------------------------------------------------
# 3D points from landmarks and depth


def _pinhole(intrinsics: Any) -> tuple[float, float, float, float]:
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
    fx, fy, cx, cy = _pinhole(intrinsics)
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
    _pinhole(intrinsics)
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


# --------------------------------------------------------------------------------------------
# Calibration result


@dataclass
class CameraExtrinsics:
    """One camera's pose in the rig.

    serial: the Kinect's serial number. T_ref_from_cam: (4, 4) float64, metres.
    landmark_rmse_mm: RMS residual of the inlier landmark pairs under the final transform.
    landmark_inliers / landmark_pairs: inlier and finite landmark pairs pooled over the frames.
    icp_rmse_mm, icp_fitness: Open3D's inlier RMSE (mm) and fitness averaged over the ICP frames
        (None for the reference camera, or when ICP was not used).
    """

    serial: str
    T_ref_from_cam: np.ndarray
    landmark_rmse_mm: float = 0.0
    landmark_inliers: int = 0
    landmark_pairs: int = 0
    icp_rmse_mm: float | None = None
    icp_fitness: float | None = None

    def to_dict(self) -> dict:
        return {
            "serial": self.serial,
            "T_ref_from_cam": np.asarray(self.T_ref_from_cam, dtype=np.float64).tolist(),
            "landmark_rmse_mm": self.landmark_rmse_mm,
            "landmark_inliers": self.landmark_inliers,
            "landmark_pairs": self.landmark_pairs,
            "icp_rmse_mm": self.icp_rmse_mm,
            "icp_fitness": self.icp_fitness,
        }

    @classmethod
    def from_dict(cls, d: dict) -> CameraExtrinsics:
        t = np.asarray(d["T_ref_from_cam"], dtype=np.float64)
        if t.shape != (4, 4) or not np.isfinite(t).all():
            raise ValueError("T_ref_from_cam must be a finite 4x4 matrix")
        r = t[:3, :3]
        if not np.allclose(r @ r.T, np.eye(3), atol=1e-6) or np.linalg.det(r) < 0 or not np.allclose(t[3], [0, 0, 0, 1]):
            raise ValueError("T_ref_from_cam is not a rigid transform")
        return cls(
            serial=str(d["serial"]),
            T_ref_from_cam=t,
            landmark_rmse_mm=float(d.get("landmark_rmse_mm", 0.0)),
            landmark_inliers=int(d.get("landmark_inliers", 0)),
            landmark_pairs=int(d.get("landmark_pairs", 0)),
            icp_rmse_mm=None if d.get("icp_rmse_mm") is None else float(d["icp_rmse_mm"]),
            icp_fitness=None if d.get("icp_fitness") is None else float(d["icp_fitness"]),
        )


@dataclass
class RigCalibration:
    """Extrinsics of every camera of a rig relative to its reference (centre) camera.

    cameras: in the rig's camera order (the dataset's `_0`, `_1`, `_2`). reference: index of the
    reference camera (its transform is the identity). frames: frame indices the solution used.
    source: what it was computed from (a sequence path), for the record.
    """

    cameras: list[CameraExtrinsics]
    reference: int
    frames: list[int] = field(default_factory=list)
    source: str = ""

    def __post_init__(self) -> None:
        if not self.cameras:
            raise ValueError("a rig calibration needs at least one camera")
        if not 0 <= self.reference < len(self.cameras):
            raise ValueError(f"reference camera {self.reference} is not one of the {len(self.cameras)} cameras")

    @property
    def serials(self) -> list[str]:
        return [c.serial for c in self.cameras]

    def T_ref_from_cam(self, camera: int | str) -> np.ndarray:
        """(4, 4) transform of a camera given by index or serial number."""
        if isinstance(camera, str):
            if camera not in self.serials:
                raise KeyError(f"camera serial {camera!r} is not in this rig ({', '.join(self.serials)})")
            camera = self.serials.index(camera)
        return np.array(self.cameras[camera].T_ref_from_cam, dtype=np.float64)

    def transforms_for(self, serials: Sequence[str], path: str | Path | None = None) -> list[np.ndarray]:
        """Transforms for another sequence's cameras, matched by serial (reuse across sequences).

        Raises InputError when a serial is not part of this calibration.
        """
        missing = [s for s in serials if s not in self.serials]
        if missing:
            raise InputError(
                f"rig calibration has no camera with serial {', '.join(missing)} (it has {', '.join(self.serials)})",
                path=path,
            )
        return [self.T_ref_from_cam(s) for s in serials]

    def to_dict(self) -> dict:
        return {
            "schema": RIG_SCHEMA,
            "reference": self.reference,
            "reference_serial": self.cameras[self.reference].serial,
            "frames": [int(f) for f in self.frames],
            "source": self.source,
            "cameras": [c.to_dict() for c in self.cameras],
        }

    @classmethod
    def from_dict(cls, d: dict) -> RigCalibration:
        if d.get("schema") != RIG_SCHEMA:
            raise ValueError(f"expected schema {RIG_SCHEMA!r}, got {d.get('schema')!r}")
        return cls(
            cameras=[CameraExtrinsics.from_dict(c) for c in d["cameras"]],
            reference=int(d["reference"]),
            frames=[int(f) for f in d.get("frames", [])],
            source=str(d.get("source", "")),
        )

    def save(self, path: str | Path) -> None:
        """Write as JSON (atomically: a temporary file beside `path`, then rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> RigCalibration:
        """Read a JSON file written by `save`; a missing or malformed file raises InputError."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise InputError("rig calibration file not found", path=path) from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot read rig calibration JSON ({exc})", path=path) from exc
        try:
            return cls.from_dict(d)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"not a valid rig calibration ({exc})", path=path) from exc


# --------------------------------------------------------------------------------------------
# Accumulate frames, solve


@dataclass(frozen=True)
class RigCalibratorConfig:
    """Settings of `RigCalibrator`.

    min_landmarks: a camera's frame counts when at least this many landmarks have depth.
    inlier_mm: RANSAC inlier distance for landmark pairs (FaceMesh is ~2-5 mm consistent between
        views; detector failures are centimetres off).
    icp: refine with point-to-plane ICP on the dense face surfaces.
    icp_frames: at most this many frames (evenly spread over the kept ones) get an ICP refinement.
    icp_max_change_mm, icp_max_change_deg: an ICP result that moves the face points (RMS) or turns
        further than this from the landmark solution is treated as a failure (kept out of the
        average).
    """

    min_landmarks: int = 100
    inlier_mm: float = 10.0
    ransac_iterations: int = 300
    icp: bool = True
    icp_frames: int = 3
    icp_max_change_mm: float = 15.0
    icp_max_change_deg: float = 5.0
    window_px: int = 2


class RigCalibrator:
    """Collects synchronized frames of all cameras and solves the rig's extrinsics.

    intrinsics: per camera, the colour camera's pinhole (3×3 or fx, fy, cx, cy attributes).
    serials: per camera serial numbers. reference: index of the reference (centre) camera; default
    the middle one (the dataset's camera 1 of 0..2).
    """

    def __init__(
        self,
        intrinsics: Sequence[Any],
        serials: Sequence[str],
        reference: int | None = None,
        config: RigCalibratorConfig | None = None,
    ):
        if len(intrinsics) == 0 or len(intrinsics) != len(serials):
            raise ValueError(f"need one intrinsics per serial, got {len(intrinsics)} and {len(serials)}")
        self.intrinsics = list(intrinsics)
        for k in self.intrinsics:
            _pinhole(k)
        self.serials = [str(s) for s in serials]
        self.reference = len(serials) // 2 if reference is None else int(reference)
        if not 0 <= self.reference < len(serials):
            raise ValueError(f"reference camera {self.reference} is not one of the {len(serials)} cameras")
        self.config = config or RigCalibratorConfig()
        self._landmarks: list[list[np.ndarray]] = []  # frames × cameras × (468, 3)
        self._surfaces: list[list[np.ndarray]] = []  # frames × cameras × (M, 3)
        self._frames: list[int] = []

    @property
    def n_cameras(self) -> int:
        return len(self.serials)

    @property
    def n_frames(self) -> int:
        """Frames kept so far (all cameras saw the face with depth)."""
        return len(self._frames)

    def add_frame(
        self,
        landmarks_px: Sequence[np.ndarray | None],
        depths_mm: Sequence[np.ndarray],
        frame_index: int | None = None,
    ) -> bool:
        """Offer one synchronized frame; returns True when it was kept.

        landmarks_px: per camera (≥468, 2) pixel landmarks (FaceMesh order; a `LandmarkResult`'s
        `points_px`), or None when that camera found no face. depths_mm: per camera (H, W) uint16
        registered depth. A frame is kept when every camera has at least `min_landmarks` landmarks
        with depth.
        """
        if len(landmarks_px) != self.n_cameras or len(depths_mm) != self.n_cameras:
            raise ValueError(f"expected {self.n_cameras} cameras, got {len(landmarks_px)} landmarks and {len(depths_mm)} depths")
        frame_index = self.n_frames if frame_index is None else int(frame_index)
        lms, surfaces = [], []
        for cam, (pts, depth) in enumerate(zip(landmarks_px, depths_mm)):
            if pts is None:
                return False
            pts = np.asarray(pts, dtype=np.float64)
            if pts.ndim != 2 or pts.shape[0] < N_MESH_POINTS or pts.shape[1] != 2:
                raise ValueError(f"camera {cam}: landmarks must be (>=468, 2) FaceMesh points, got {pts.shape}")
            pts = pts[:N_MESH_POINTS]
            xyz = landmarks_to_points(pts, depth, self.intrinsics[cam], window_px=self.config.window_px)
            n_ok = int(np.isfinite(xyz).all(axis=1).sum())
            if n_ok < self.config.min_landmarks:
                logger.debug("frame %d camera %d: only %d landmarks with depth", frame_index, cam, n_ok)
                return False
            lms.append(xyz)
            surfaces.append(
                face_surface_points(depth, pts, self.intrinsics[cam], xyz).astype(np.float32) if self.config.icp else None
            )
        self._landmarks.append(lms)
        self._surfaces.append(surfaces)
        self._frames.append(frame_index)
        return True

    def solve(self) -> RigCalibration:
        """Extrinsics from the kept frames. Raises ValueError when no frame was kept."""
        if self.n_frames == 0:
            raise ValueError("no frame where every camera saw the face with depth")
        ref = self.reference
        cameras = []
        for cam in range(self.n_cameras):
            if cam == ref:
                n_pairs = sum(int(np.isfinite(f[cam]).all(axis=1).sum()) for f in self._landmarks)
                cameras.append(CameraExtrinsics(self.serials[cam], np.eye(4), 0.0, n_pairs, n_pairs))
                continue
            cameras.append(self._solve_camera(cam))
        return RigCalibration(cameras=cameras, reference=ref, frames=list(self._frames))

    def _solve_camera(self, cam: int) -> CameraExtrinsics:
        ref = self.reference
        src = np.concatenate([f[cam] for f in self._landmarks])
        dst = np.concatenate([f[ref] for f in self._landmarks])
        fit = robust_rigid_alignment(
            src, dst, inlier_mm=self.config.inlier_mm, iterations=self.config.ransac_iterations, seed=cam
        )
        t = fit.T
        n_pairs = int((np.isfinite(src).all(axis=1) & np.isfinite(dst).all(axis=1)).sum())
        logger.info(
            "camera %d: landmark alignment %d/%d inliers, RMS %.2f mm",
            cam, int(fit.inliers.sum()), n_pairs, fit.rmse_mm,
        )
        icp_rmse = icp_fitness = None
        if self.config.icp:
            picks = np.unique(np.linspace(0, self.n_frames - 1, min(self.config.icp_frames, self.n_frames)).round().astype(int))
            refined, rmses, fitnesses = [], [], []
            for i in picks:
                s, d = self._surfaces[i][cam], self._surfaces[i][ref]
                if len(s) < 100 or len(d) < 100:
                    continue
                icp = refine_point_to_plane(s, d, fit.T)
                # Judge the change where the face is: a small rotation about the face moves the
                # camera's origin (0.5-1 m away) by centimetres.
                moved_mm = 1000.0 * float(
                    np.sqrt(np.mean(np.sum((transform_points(icp.T, s) - transform_points(fit.T, s)) ** 2, axis=1)))
                )
                turned = rotation_angle_deg(np.linalg.inv(fit.T)[:3, :3] @ icp.T[:3, :3])
                if moved_mm > self.config.icp_max_change_mm or turned > self.config.icp_max_change_deg:
                    logger.warning(
                        "camera %d frame %d: ICP moved the face %.1f mm / %.2f deg from the landmark solution; ignored",
                        cam, self._frames[i], moved_mm, turned,
                    )
                    continue
                refined.append(icp.T)
                rmses.append(icp.rmse_mm)
                fitnesses.append(icp.fitness)
            if refined:
                t = average_transforms(refined)
                icp_rmse, icp_fitness = float(np.mean(rmses)), float(np.mean(fitnesses))
                logger.info("camera %d: ICP on %d frames, RMS %.2f mm, fitness %.2f", cam, len(refined), icp_rmse, icp_fitness)
        res = np.linalg.norm(transform_points(t, src[fit.inliers]) - dst[fit.inliers], axis=1)
        return CameraExtrinsics(
            serial=self.serials[cam],
            T_ref_from_cam=t,
            landmark_rmse_mm=float(np.sqrt(np.mean(res**2)) * 1000.0),
            landmark_inliers=int(fit.inliers.sum()),
            landmark_pairs=n_pairs,
            icp_rmse_mm=icp_rmse,
            icp_fitness=icp_fitness,
        )
