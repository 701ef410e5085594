"""Typed inputs and outputs of the face fitter.

Frames: every camera c has an OpenCV colour-camera frame (x right, y down, z forward, metres);
`T_ref_from_cam` maps its points to the reference camera (the rig's centre camera), where results
are expressed. Pixels: integer coordinates are pixel centres of the raw (distorted) colour image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["CameraObservation", "FrameObservation", "Pose", "FitResult"]


@dataclass
class CameraObservation:
    """What one camera contributes to one frame.

    Attributes:
        intrinsics: the colour camera of the whole image: a `fit.camera_terms.FitCamera`, a
            `k4a.camera_model.CameraModel` or a `formats.intrinsics.IntrinsicsJson` (pinhole)
            (`FitCamera.of`).
        landmarks_px: float (P, 2) detector points (MediaPipe FaceMesh order) in raw image pixels
            of the window at `offset_px`, or None when no face was detected in this camera. NaN
            rows count as missing points.
        landmark_conf: float (P,) in [0, 1] per point, or None (all 1).
        depth_mm: uint16 (H, W) depth registered to this colour camera, millimetres, 0 = no
            measurement, of the window at `offset_px` (inside the image); or None.
        T_ref_from_cam: float (4, 4) rigid transform, this camera's frame -> reference frame
            (identity for the reference camera).
        offset_px: (x0, y0) the top-left pixel in the camera's image of the window that
            `landmarks_px`, `depth_mm` and `color_rgb` cover (a face crop); (0, 0): the whole image.
            The camera stays the whole image's, so its tables (ray maps) are built once, not per
            crop box.
        color_rgb: uint8 (H, W, 3) RGB of the same window as `depth_mm`, or None. Only the
            photometric term (`FitterConfig.raster` "depth+color") reads it; producers fill it
            only then.
    """

    intrinsics: Any
    landmarks_px: np.ndarray | None
    depth_mm: np.ndarray | None = None
    landmark_conf: np.ndarray | None = None
    T_ref_from_cam: np.ndarray = field(default_factory=lambda: np.eye(4))
    offset_px: tuple[int, int] = (0, 0)
    color_rgb: np.ndarray | None = None

    def has_face(self) -> bool:
        """True when landmarks were given and at least 3 are finite with positive confidence."""
        if self.landmarks_px is None:
            return False
        lm = np.asarray(self.landmarks_px)
        ok = np.isfinite(lm).all(axis=1) if lm.ndim == 2 else np.zeros(0, bool)
        if self.landmark_conf is not None:
            ok &= np.asarray(self.landmark_conf).ravel()[: len(ok)] > 0
        return int(ok.sum()) >= 3


@dataclass
class FrameObservation:
    """All cameras of one synchronized frame (1 to K cameras).

    hurry: fit it the fast way (a warm-started frame only: at most `FitterConfig.fast_iterations` LM
    iterations and no offset step, the previous frame's offsets kept): the live policy's frames
    that reach the fitter late.
    """

    cameras: list[CameraObservation]
    frame_index: int | None = None
    hurry: bool = False

    def has_face(self) -> bool:
        return any(c.has_face() for c in self.cameras)


@dataclass(frozen=True)
class Pose:
    """Rigid model -> reference-camera transform: X_ref = R @ X_model + t.

    Attributes:
        axis_angle: float64 (3,) radians.  rotation: float64 (3, 3).  translation: float64 (3,) metres.
    """

    rotation: np.ndarray
    translation: np.ndarray

    @property
    def axis_angle(self) -> np.ndarray:
        from mmface4d_stream.geometry import so3_log

        return so3_log(self.rotation)

    def matrix(self) -> np.ndarray:
        """4x4 float64 T_ref_from_model."""
        from mmface4d_stream.geometry import RigidTransform

        return RigidTransform(self.rotation, self.translation).as_matrix()


@dataclass
class FitResult:
    """The fitter's answer for one frame.

    Attributes:
        vertices: float32 (N, 3) metres in the reference camera frame (NaN only when the face was
            never found: `lost` and nothing to carry).
        pose: model -> reference transform.
        id_coeffs: float32 (K_id,); exp_coeffs: float32 (K_exp,) (unit-variance coefficients).
        offsets: float32 (N, 3) metres, per-vertex non-rigid offsets in the model frame.
        residuals: named figures of the final state: `landmark_rms_px` (all cameras),
            `landmark_rms_px/cam<i>`, `depth_rms_mm`, `depth_inliers` (associated vertex count),
            `cost` (the total weighted cost).
        iterations: Gauss-Newton iterations run on this frame.
        converged: the last step changed the parameters less than the tolerance.
        lost: no camera saw a face; the result is the previous frame's, carried over.
        depth_used: the depth term took part (False: landmark-only fit, see `flags`).
        flags: short machine-readable notes, e.g. "no_depth", "no_depth:cam1", "cold_start",
            "template_built", "lost", "identity_frozen".
        frame_index: copied from the observation.
        model_name: the `FaceModel.name` the vertices belong to.
    """

    vertices: np.ndarray
    pose: Pose
    id_coeffs: np.ndarray
    exp_coeffs: np.ndarray
    offsets: np.ndarray
    residuals: dict[str, float]
    iterations: int
    converged: bool
    lost: bool = False
    depth_used: bool = True
    flags: tuple[str, ...] = ()
    frame_index: int | None = None
    model_name: str = ""
