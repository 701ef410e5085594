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

This module holds the rig file type (`CameraExtrinsics`, `RigCalibration`) and the calibrator
(`RigCalibratorConfig`, `RigCalibrator`); the point-set geometry of steps 1-3 (depth lifting,
robust Kabsch, ICP, pose averaging) is `fit.rig_align`'s.

`RigCalibration` is saved as JSON and is reusable for all sequences of the same rig (cameras are
matched by serial number). Frames: OpenCV camera frames (x right, y down, z forward) in metres;
`T_ref_from_cam` maps a point in camera c to the reference camera: X_ref = T[:3,:3] X_c + T[:3,3].
Pixels: integer coordinates are pixel centres (the Kinect intrinsics' convention).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmface4d_stream.errors import InputError
from mmface4d_stream.fit.rig_align import (
    average_transforms,
    face_surface_points,
    landmarks_to_points,
    pinhole_parameters,
    refine_point_to_plane,
    robust_rigid_alignment,
    rotation_angle_deg,
    transform_points,
)

logger = logging.getLogger(__name__)

RIG_SCHEMA = "mmface4d.rig/1"
N_MESH_POINTS = 468
"""FaceMesh points used for 3D landmarks (the 10 iris points sit on a reflective surface)."""


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
            pinhole_parameters(k)
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
