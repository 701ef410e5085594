"""Azure Kinect camera calibration without the Kinect SDK.

A Kinect stores one factory calibration per device (the MKV attachment `calibration.json`, or
`k4a_device_get_raw_calibration` on a live device). It describes each camera on its full sensor
with *normalized* intrinsics (principal point and focal length divided by the sensor size, origin
at the top-left corner of the top-left pixel) and a Brown–Conrady lens model with a rational
radial term. Each capture mode reads a binned and cropped window of the sensor, so the pixel
intrinsics of a mode are::

    f_px = f_normalized * binned_size
    c_px = c_normalized * binned_size - crop_offset - 0.5      (0.5: origin at the pixel centre)

with the binned size and crop offset of each color resolution and depth mode from the Sensor
SDK's mode table (`MODE_TABLE` below).

Extrinsics: each camera's `Rt` maps points in the depth camera's frame to that camera's frame
(the depth camera's own `Rt` is the identity). The JSON stores translations in metres (the SDK
multiplies them by 1000 for its millimetre API); everything here is in metres.

Lens model (`CameraModel`), for a point (X, Y, Z) in the camera frame, Z > 0::

    x, y = X / Z - codx, Y / Z - cody,   r2 = x² + y²       (invalid when r2 > metric_radius²)
    d = (1 + k1 r2 + k2 r2² + k3 r2³) / (1 + k4 r2 + k5 r2² + k6 r2³)
    xd = x d + (r2 + 2x²) p2 + 2 x y p1 + codx
    yd = y d + (r2 + 2y²) p1 + 2 x y p2 + cody
    u, v = fx xd + cx, fy yd + cy                            (pixels, (0, 0) = top-left pixel centre)

Unprojection inverts it with Gauss–Newton from a closed-form first guess (as the SDK does) and
marks pixels invalid where it does not converge to 1e-3 px. Every projection function takes numpy
arrays or torch tensors (any device) and returns the same kind.

Reference: D. C. Brown, "Decentering distortion of lenses", Photogrammetric Engineering 32(3),
1966; the rational radial term as in OpenCV's `CALIB_RATIONAL_MODEL`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field, replace
from enum import Enum
from os import PathLike
from typing import Any, NamedTuple

import numpy as np

from mmface4d_stream.errors import InputError

log = logging.getLogger(__name__)

BROWN_CONRADY = "CALIBRATION_LensDistortionModelBrownConrady"
RATIONAL_6KT = "CALIBRATION_LensDistortionModelRational6KT"
_SUPPORTED_MODELS = (BROWN_CONRADY, RATIONAL_6KT)

DEPTH_LOCATION = "CALIBRATION_CameraLocationD0"
COLOR_LOCATION = "CALIBRATION_CameraLocationPV0"
DEPTH_PURPOSE = "CALIBRATION_CameraPurposeDepth"
COLOR_PURPOSE = "CALIBRATION_CameraPurposePhotoVideo"

# The SDK falls back to this radius (about a 120 degree field of view) when the factory
# calibration could not estimate one (stored as 0).
DEFAULT_METRIC_RADIUS = 1.7

# Unprojection: a pixel is valid when the Gauss-Newton residual is below this (pixels squared),
# the SDK's own acceptance threshold.
_UNPROJECT_MAX_SQUARED_ERROR_PX = 1e-6
_UNPROJECT_MAX_ITERATIONS = 20
_UNPROJECT_CHUNK = 1 << 20  # pixels per numpy batch


# ----------------------------------------------------------------------------------------------
# Modes


class ModeInfo(NamedTuple):
    """How a capture mode reads the sensor: scale to the binned size, then crop to the output.

    All values in pixels of the mode: `binned_*` is the full sensor after binning/scaling,
    `crop_*` the top-left corner of the output window in it, `width`/`height` the image size.
    """

    binned_width: int
    binned_height: int
    crop_x: int
    crop_y: int
    width: int
    height: int


class _SensorMode:
    """What color resolutions and depth modes share: their row of `MODE_TABLE` and the SDK's ids.

    The SDK numbers both enums from 1 in declaration order (0 is OFF), as pyk4a does.
    """

    @property
    def mode_info(self) -> ModeInfo:
        return MODE_TABLE[self]

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        info = MODE_TABLE[self]
        return info.width, info.height

    @property
    def k4a_id(self) -> int:
        """The SDK's enum value (`k4a_color_resolution_t` / `k4a_depth_mode_t`, pyk4a's values)."""
        return list(type(self)).index(self) + 1

    @classmethod
    def from_k4a_id(cls, value: int):
        members = list(cls)
        if not 1 <= int(value) <= len(members):
            raise ValueError(f"k4a {cls.__name__} id must be 1..{len(members)} (0 is OFF), got {value}.")
        return members[int(value) - 1]


class ColorResolution(_SensorMode, Enum):
    """Azure Kinect color camera resolutions (4:3 sensor of 4096x3072 pixels)."""

    RES_720P = "720P"
    RES_1080P = "1080P"
    RES_1440P = "1440P"
    RES_1536P = "1536P"
    RES_2160P = "2160P"
    RES_3072P = "3072P"


    @classmethod
    def parse(cls, value: ColorResolution | str | int) -> ColorResolution:
        """Accept the enum, '1080P', 'RES_1080P', 'K4A_COLOR_RESOLUTION_1080P', the MKV tag
        K4A_COLOR_MODE form 'MJPG_1080P', or a height in pixels (1080)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            for member in cls:
                if member.size[1] == int(value):
                    return member
            raise ValueError(
                f"unknown Azure Kinect color resolution height {value}; expected one of "
                f"{', '.join(str(m.size[1]) for m in cls)}."
            )
        if isinstance(value, str):
            text = value.strip().upper()
            for member in cls:
                if text == member.value or text.endswith("_" + member.value):
                    return member
        raise ValueError(
            f"unknown Azure Kinect color resolution {value!r}; expected one of "
            f"{', '.join(m.value for m in cls)} (e.g. '1080P' or 'MJPG_1080P')."
        )


class DepthMode(_SensorMode, Enum):
    """Azure Kinect depth camera modes (1024x1024 sensor)."""

    NFOV_2X2BINNED = "NFOV_2X2BINNED"
    NFOV_UNBINNED = "NFOV_UNBINNED"
    WFOV_2X2BINNED = "WFOV_2X2BINNED"
    WFOV_UNBINNED = "WFOV_UNBINNED"
    PASSIVE_IR = "PASSIVE_IR"


    @classmethod
    def parse(cls, value: DepthMode | str) -> DepthMode:
        """Accept the enum, 'NFOV_UNBINNED' (the MKV tag K4A_DEPTH_MODE form) or
        'K4A_DEPTH_MODE_NFOV_UNBINNED', case-insensitive."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            text = value.strip().upper()
            if text.startswith("K4A_DEPTH_MODE_"):
                text = text[len("K4A_DEPTH_MODE_"):]
            for member in cls:
                if text == member.value:
                    return member
        raise ValueError(
            f"unknown Azure Kinect depth mode {value!r}; expected one of {', '.join(m.value for m in cls)}."
        )


# Binned size, crop offset and output size of every mode (Azure Kinect Sensor SDK,
# src/transformation/mode_specific_calibration.c). Color modes refer to the 4:3 sensor.
MODE_TABLE: dict[ColorResolution | DepthMode, ModeInfo] = {
    ColorResolution.RES_720P: ModeInfo(1280, 960, 0, 120, 1280, 720),
    ColorResolution.RES_1080P: ModeInfo(1920, 1440, 0, 180, 1920, 1080),
    ColorResolution.RES_1440P: ModeInfo(2560, 1920, 0, 240, 2560, 1440),
    ColorResolution.RES_1536P: ModeInfo(2048, 1536, 0, 0, 2048, 1536),
    ColorResolution.RES_2160P: ModeInfo(3840, 2880, 0, 360, 3840, 2160),
    ColorResolution.RES_3072P: ModeInfo(4096, 3072, 0, 0, 4096, 3072),
    DepthMode.NFOV_2X2BINNED: ModeInfo(512, 512, 96, 90, 320, 288),
    DepthMode.NFOV_UNBINNED: ModeInfo(1024, 1024, 192, 180, 640, 576),
    DepthMode.WFOV_2X2BINNED: ModeInfo(512, 512, 0, 0, 512, 512),
    DepthMode.WFOV_UNBINNED: ModeInfo(1024, 1024, 0, 0, 1024, 1024),
    DepthMode.PASSIVE_IR: ModeInfo(1024, 1024, 0, 0, 1024, 1024),
}

DEPTH_SENSOR_SIZE = (1024, 1024)
COLOR_SENSOR_SIZE = (4096, 3072)
# Early calibrations describe the color camera on a 16:9 window (4096x2304) of the 4:3 sensor,
# 384 rows below its top; they are re-expressed on the 4:3 sensor before the mode table applies.
_LEGACY_COLOR_WINDOW = ModeInfo(4096, 2304, 0, -384, 4096, 3072)


# ----------------------------------------------------------------------------------------------
# Array helpers: one implementation for numpy arrays and torch tensors


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _where(cond, a, b):
    if _is_torch(cond):
        import torch

        return torch.where(cond, a, b)
    return np.where(cond, a, b)


def _stack(parts, like):
    if _is_torch(like):
        import torch

        return torch.stack(parts, dim=-1)
    return np.stack(parts, axis=-1)


def _as_float(x, *, like=None, min_dtype=None):
    """A float array/tensor from `x` (numpy, torch or nested lists), keeping float32/float64.

    With `like`, a non-array `x` becomes the same kind as `like` (tensor on its device)."""
    if _is_torch(x):
        import torch

        if not torch.is_floating_point(x):
            x = x.to(torch.float32)
        if min_dtype == "float64":
            x = x.to(torch.float64)
        return x
    if like is not None and _is_torch(like):
        import torch

        dtype = torch.float64 if min_dtype == "float64" else (
            like.dtype if torch.is_floating_point(like) else torch.float32
        )
        return torch.as_tensor(np.asarray(x), dtype=dtype, device=like.device)
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64) or min_dtype == "float64":
        x = x.astype(np.float64)
    return x


def _cast_like(x, like):
    """`x` converted to the float dtype of `like` (same kind)."""
    if _is_torch(like):
        return x.to(like.dtype) if x.dtype != like.dtype else x
    return x.astype(like.dtype, copy=False)


# ----------------------------------------------------------------------------------------------
# Rigid transforms


@dataclass(frozen=True, eq=False)
class RigidTransform:
    """A rotation and translation mapping points from one camera frame to another.

    `T_b_from_a.apply(points_a) = points_a @ R.T + t`. R: (3, 3) float64, t: (3,) float64 metres.
    """

    R: np.ndarray
    t: np.ndarray

    def __post_init__(self) -> None:
        R = np.array(self.R, dtype=np.float64)
        t = np.array(self.t, dtype=np.float64).reshape(-1)
        if R.shape != (3, 3) or t.shape != (3,):
            raise ValueError(f"a rigid transform needs R of shape (3, 3) and t of shape (3,), got {R.shape} and {t.shape}.")
        if not (np.isfinite(R).all() and np.isfinite(t).all()):
            raise ValueError("a rigid transform must hold finite numbers.")
        R.setflags(write=False)
        t.setflags(write=False)
        object.__setattr__(self, "R", R)
        object.__setattr__(self, "t", t)

    @classmethod
    def identity(cls) -> RigidTransform:
        return cls(np.eye(3), np.zeros(3))

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> RigidTransform:
        """From a 4x4 (or 3x4) homogeneous matrix, translation in metres."""
        m = np.asarray(matrix, dtype=np.float64)
        if m.shape not in ((4, 4), (3, 4)):
            raise ValueError(f"expected a 4x4 or 3x4 matrix, got shape {m.shape}.")
        return cls(m[:3, :3], m[:3, 3])

    def as_matrix(self) -> np.ndarray:
        """(4, 4) float64 homogeneous matrix, translation in metres."""
        m = np.eye(4)
        m[:3, :3] = self.R
        m[:3, 3] = self.t
        return m

    def apply(self, points):
        """Map points (..., 3) metres (numpy or torch) into the target frame; same kind and dtype."""
        points = _as_float(points)
        if points.shape[-1] != 3:
            raise ValueError(f"points must have shape (..., 3), got {tuple(points.shape)}.")
        if _is_torch(points):
            import torch

            R = torch.tensor(self.R.tolist(), dtype=points.dtype, device=points.device)
            t = torch.tensor(self.t.tolist(), dtype=points.dtype, device=points.device)
            return points @ R.T + t
        return points @ self.R.T.astype(points.dtype) + self.t.astype(points.dtype)

    def inverse(self) -> RigidTransform:
        return RigidTransform(self.R.T, -self.R.T @ self.t)

    def compose(self, other: RigidTransform) -> RigidTransform:
        """`self ∘ other`: apply `other` first (T_c_from_a = T_c_from_b.compose(T_b_from_a))."""
        return RigidTransform(self.R @ other.R, self.R @ other.t + self.t)

    def __matmul__(self, other: RigidTransform) -> RigidTransform:
        return self.compose(other)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RigidTransform):
            return NotImplemented
        return bool(np.array_equal(self.R, other.R) and np.array_equal(self.t, other.t))

    __hash__ = None  # type: ignore[assignment]

    def allclose(self, other: RigidTransform, atol: float = 1e-9) -> bool:
        return bool(np.allclose(self.R, other.R, atol=atol) and np.allclose(self.t, other.t, atol=atol))

    def __repr__(self) -> str:
        return f"RigidTransform(R={self.R.tolist()}, t={self.t.tolist()})"


# ----------------------------------------------------------------------------------------------
# Camera model (pixel intrinsics of one mode)


class Projection(NamedTuple):
    """`pixels` (..., 2) (u, v) with (0, 0) the centre of the top-left pixel; `valid` (...) bool."""

    pixels: Any
    valid: Any


class Unprojection(NamedTuple):
    """`points` (..., 3) metres in the camera frame (zeros where invalid); `valid` (...) bool."""

    points: Any
    valid: Any


@dataclass(frozen=True)
class CameraModel:
    """Pixel intrinsics and lens distortion of one camera in one capture mode.

    fx, fy, cx, cy in pixels ((0, 0) = centre of the top-left pixel); k1..k6, p1, p2 and the
    distortion centre codx, cody (normalized image plane, 0 for Brown–Conrady) are unitless;
    `metric_radius` bounds the normalized radius where the lens model is trusted.
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    k1: float = 0.0
    k2: float = 0.0
    k3: float = 0.0
    k4: float = 0.0
    k5: float = 0.0
    k6: float = 0.0
    p1: float = 0.0
    p2: float = 0.0
    codx: float = 0.0
    cody: float = 0.0
    metric_radius: float = DEFAULT_METRIC_RADIUS
    model_type: str = BROWN_CONRADY

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"camera image size must be positive, got {self.width}x{self.height}.")
        if not (self.fx > 0 and self.fy > 0):
            raise ValueError(f"camera focal lengths must be positive, got fx={self.fx}, fy={self.fy}.")
        if self.model_type not in _SUPPORTED_MODELS:
            raise ValueError(f"unsupported lens model {self.model_type!r}; expected one of {_SUPPORTED_MODELS}.")
        if not self.metric_radius > 0:
            raise ValueError(f"metric_radius must be positive, got {self.metric_radius}.")

    @property
    def K(self) -> np.ndarray:
        """(3, 3) float64 pixel intrinsic matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.width, self.height

    @property
    def distortion(self) -> np.ndarray:
        """(8,) float64 in OpenCV's rational order k1, k2, p1, p2, k3, k4, k5, k6 (codx = cody = 0)."""
        return np.array([self.k1, self.k2, self.p1, self.p2, self.k3, self.k4, self.k5, self.k6])

    @property
    def has_distortion(self) -> bool:
        return any(v != 0.0 for v in (self.k1, self.k2, self.k3, self.k4, self.k5, self.k6, self.p1, self.p2))

    # -- lens model on the normalized image plane --------------------------------------------

    def _distort(self, x, y, jacobian: bool = False):
        """Normalized undistorted (x, y) -> distorted (xd, yd), squared radius r2 [, Jacobian]."""
        xp = x - self.codx
        yp = y - self.cody
        xp2 = xp * xp
        yp2 = yp * yp
        xyp = xp * yp
        rs = xp2 + yp2
        a = 1.0 + rs * (self.k1 + rs * (self.k2 + rs * self.k3))
        b = 1.0 + rs * (self.k4 + rs * (self.k5 + rs * self.k6))
        b = _where(b == 0, 1.0, b) if (self.k4 or self.k5 or self.k6) else b
        d = a / b
        # Brown-Conrady doubles the cross term of the tangential part; the legacy 6KT model does not.
        tangential = 2.0 if self.model_type == BROWN_CONRADY else 1.0
        xd = xp * d + (rs + 2.0 * xp2) * self.p2 + tangential * xyp * self.p1 + self.codx
        yd = yp * d + (rs + 2.0 * yp2) * self.p1 + tangential * xyp * self.p2 + self.cody
        if not jacobian:
            return xd, yd, rs
        dadrs = self.k1 + rs * (2.0 * self.k2 + 3.0 * self.k3 * rs)
        dbdrs = self.k4 + rs * (2.0 * self.k5 + 3.0 * self.k6 * rs)
        dd2 = 2.0 * (dadrs * b - a * dbdrs) / (b * b)
        j00 = d + xp2 * dd2 + 6.0 * xp * self.p2 + tangential * yp * self.p1
        j01 = xyp * dd2 + 2.0 * yp * self.p2 + tangential * xp * self.p1
        j10 = xyp * dd2 + 2.0 * xp * self.p1 + tangential * yp * self.p2
        j11 = d + yp2 * dd2 + 6.0 * yp * self.p1 + tangential * xp * self.p2
        return xd, yd, rs, (j00, j01, j10, j11)

    def _distort_inplace(self, x: np.ndarray, y: np.ndarray, work: list[np.ndarray]) -> np.ndarray:
        """`_distort` for numpy, overwriting x, y with xd, yd; returns r2 (one of `work`).

        `work`: five scratch arrays shaped and typed like x. For per-frame loops: fresh large
        temporaries each cost page faults (glibc maps and unmaps them), which on a loaded
        machine costs several times the arithmetic.
        """
        xp2, yp2, rs, d, s = work
        if self.codx:
            x -= self.codx
        if self.cody:
            y -= self.cody
        np.multiply(x, x, out=xp2)
        np.multiply(y, y, out=yp2)
        np.add(xp2, yp2, out=rs)
        np.multiply(rs, self.k6, out=d)
        d += self.k5
        d *= rs
        d += self.k4
        d *= rs
        d += 1.0
        if self.k4 or self.k5 or self.k6:
            d[d == 0] = 1.0
        np.divide(1.0, d, out=d)
        np.multiply(rs, self.k3, out=s)
        s += self.k2
        s *= rs
        s += self.k1
        s *= rs
        s += 1.0
        d *= s
        np.multiply(x, y, out=s)
        s *= 2.0 if self.model_type == BROWN_CONRADY else 1.0
        xp2 *= 2.0
        xp2 += rs
        xp2 *= self.p2
        yp2 *= 2.0
        yp2 += rs
        yp2 *= self.p1
        x *= d
        x += xp2
        y *= d
        y += yp2
        np.multiply(s, self.p1, out=xp2)
        x += xp2
        np.multiply(s, self.p2, out=yp2)
        y += yp2
        if self.codx:
            x += self.codx
        if self.cody:
            y += self.cody
        return rs

    def project_normalized(self, xy):
        """Normalized undistorted coordinates (..., 2) (X/Z, Y/Z) -> Projection(pixels, valid).

        `valid` is False beyond the metric radius. Numpy or torch in, same kind out.
        """
        xy = _as_float(xy)
        if xy.shape[-1] != 2:
            raise ValueError(f"normalized coordinates must have shape (..., 2), got {tuple(xy.shape)}.")
        xd, yd, rs = self._distort(xy[..., 0], xy[..., 1])
        pixels = _stack([xd * self.fx + self.cx, yd * self.fy + self.cy], like=xy)
        return Projection(pixels, rs <= self.metric_radius**2)

    def project(self, points, *, require_inside: bool = False) -> Projection:
        """Points (..., 3) metres in the camera frame -> Projection(pixels (..., 2), valid (...)).

        `valid`: in front of the camera (Z > 0) and within the lens model's metric radius; with
        `require_inside`, also inside the image ([-0.5, width - 0.5) x [-0.5, height - 0.5)).
        Numpy arrays or torch tensors (any device); float32 stays float32.
        """
        points = _as_float(points)
        if points.shape[-1] != 3:
            raise ValueError(f"points must have shape (..., 3), got {tuple(points.shape)}.")
        z = points[..., 2]
        in_front = z > 0
        safe_z = _where(in_front, z, 1.0)
        x = points[..., 0] / safe_z
        y = points[..., 1] / safe_z
        xd, yd, rs = self._distort(x, y)
        u = xd * self.fx + self.cx
        v = yd * self.fy + self.cy
        valid = in_front & (rs <= self.metric_radius**2)
        if require_inside:
            valid = valid & self._inside(u, v)
        pixels = _stack([u, v], like=points)
        pixels = _where(valid[..., None], pixels, 0.0)
        return Projection(pixels, valid)

    def _inside(self, u, v):
        return (u >= -0.5) & (u < self.width - 0.5) & (v >= -0.5) & (v < self.height - 0.5)

    def unproject_to_rays(self, pixels) -> Unprojection:
        """Pixels (..., 2) -> Unprojection(rays (..., 3) = (X/Z, Y/Z, 1), valid (...)).

        Gauss–Newton on the lens model from the SDK's closed-form first guess, at most 20 steps,
        in float64; `valid` where it converges to 1e-3 px inside the metric radius. Returns the
        input's float dtype (float64 for integer input).
        """
        pixels_in = _as_float(pixels)
        if pixels_in.shape[-1] != 2:
            raise ValueError(f"pixels must have shape (..., 2), got {tuple(pixels_in.shape)}.")
        count = int(np.prod(pixels_in.shape[:-1]))
        if not _is_torch(pixels_in) and count > _UNPROJECT_CHUNK:
            # Bound the float64 temporaries (~30 per pixel): a 4096x3072 grid would need GBs.
            flat = pixels_in.reshape(-1, 2)
            parts = [self.unproject_to_rays(flat[i : i + _UNPROJECT_CHUNK]) for i in range(0, count, _UNPROJECT_CHUNK)]
            rays = np.concatenate([p.points for p in parts]).reshape(*pixels_in.shape[:-1], 3)
            valid = np.concatenate([p.valid for p in parts]).reshape(pixels_in.shape[:-1])
            return Unprojection(rays, valid)
        uv = _as_float(pixels_in, min_dtype="float64")
        u = uv[..., 0]
        v = uv[..., 1]
        # Closed-form first guess: invert the radial part at the distorted radius, then
        # subtract the tangential part evaluated at that estimate.
        xd = (u - self.cx) / self.fx - self.codx
        yd = (v - self.cy) / self.fy - self.cody
        rs = xd * xd + yd * yd
        a = 1.0 + rs * (self.k1 + rs * (self.k2 + rs * self.k3))
        b = 1.0 + rs * (self.k4 + rs * (self.k5 + rs * self.k6))
        a = _where(a == 0, 1.0, a)
        x = xd * b / a
        y = yd * b / a
        two_xy = 2.0 * x * y
        xx = x * x
        yy = y * y
        x = x - ((yy + 3.0 * xx) * self.p2 + two_xy * self.p1) + self.codx
        y = y - ((xx + 3.0 * yy) * self.p1 + two_xy * self.p2) + self.cody

        best_x, best_y = x, y
        best_err = u * 0.0 + math.inf
        active = best_err > 0
        for _ in range(_UNPROJECT_MAX_ITERATIONS):
            pxd, pyd, _, (j00, j01, j10, j11) = self._distort(x, y, jacobian=True)
            ex = u - (pxd * self.fx + self.cx)
            ey = v - (pyd * self.fy + self.cy)
            err = ex * ex + ey * ey
            # Like the SDK, a pixel stops at its first non-improving step and keeps its best guess.
            improved = active & (err < best_err)
            best_x = _where(improved, x, best_x)
            best_y = _where(improved, y, best_y)
            best_err = _where(improved, err, best_err)
            active = improved & (best_err >= 1e-22)
            if not bool(active.any()):
                break
            # Newton step on the pixel residual: J_pixels = diag(fx, fy) @ J_normalized.
            ex = ex / self.fx
            ey = ey / self.fy
            det = j00 * j11 - j01 * j10
            det = _where(det == 0, 1.0, det)
            x = _where(active, x + (j11 * ex - j01 * ey) / det, x)
            y = _where(active, y + (j00 * ey - j10 * ex) / det, y)
        rs_best = (best_x - self.codx) ** 2 + (best_y - self.cody) ** 2
        valid = (best_err < _UNPROJECT_MAX_SQUARED_ERROR_PX) & (rs_best <= self.metric_radius**2)
        one = best_x * 0.0 + 1.0
        rays = _stack([best_x, best_y, one], like=uv)
        rays = _where(valid[..., None], rays, 0.0)
        return Unprojection(_cast_like(rays, pixels_in), valid)

    def unproject(self, pixels, depth) -> Unprojection:
        """Pixels (..., 2) and depth (...) metres along the optical axis (Z) -> Unprojection.

        `depth` broadcasts against pixels[..., 0]; depth <= 0 (no measurement) is invalid.
        Points are (X, Y, Z) metres in the camera frame, zeros where invalid.
        """
        rays, valid = self.unproject_to_rays(pixels)
        depth = _as_float(depth, like=rays)
        depth = _cast_like(depth, rays)
        valid = valid & (depth > 0)
        points = rays * depth[..., None]
        points = _where(valid[..., None], points, 0.0)
        return Unprojection(points, valid)

    def pixel_grid(self, dtype=np.float64) -> np.ndarray:
        """(height, width, 2) pixel centres (u, v) of the whole image."""
        u, v = np.meshgrid(np.arange(self.width, dtype=dtype), np.arange(self.height, dtype=dtype))
        return np.stack([u, v], axis=-1)

    def pixel_rays(self) -> Unprojection:
        """Rays (X/Z, Y/Z, 1) of every pixel: Unprojection((height, width, 3) float64, (height, width))."""
        return self.unproject_to_rays(self.pixel_grid())


# ----------------------------------------------------------------------------------------------
# Raw (device) calibration: normalized full-sensor parameters, as stored in calibration.json


@dataclass(frozen=True)
class RawCamera:
    """One camera of the raw calibration: normalized full-sensor intrinsics and extrinsics.

    cx, cy, fx, fy are divided by the sensor width/height (origin at the top-left corner of the
    top-left pixel); `T_camera_from_depth` is the JSON `Rt` (translation in metres).
    `metric_radius` is stored as read (0 means "not estimated"; models then use 1.7).
    """

    cx: float
    cy: float
    fx: float
    fy: float
    k1: float = 0.0
    k2: float = 0.0
    k3: float = 0.0
    k4: float = 0.0
    k5: float = 0.0
    k6: float = 0.0
    codx: float = 0.0
    cody: float = 0.0
    p2: float = 0.0
    p1: float = 0.0
    metric_radius: float = 0.0
    sensor_width: int = 1024
    sensor_height: int = 1024
    T_camera_from_depth: RigidTransform = field(default_factory=RigidTransform.identity)
    model_type: str = BROWN_CONRADY
    location: str = DEPTH_LOCATION
    purpose: str = DEPTH_PURPOSE

    @property
    def model_parameters(self) -> list[float]:
        """The 14 JSON `ModelParameters` in the device's order (p2 before p1)."""
        return [self.cx, self.cy, self.fx, self.fy, self.k1, self.k2, self.k3, self.k4, self.k5, self.k6,
                self.codx, self.cody, self.p2, self.p1]

    def camera_model(self, mode: ColorResolution | DepthMode) -> CameraModel:
        """Pixel intrinsics of this camera for a capture mode (see the module docstring)."""
        if isinstance(mode, DepthMode):
            if (self.sensor_width, self.sensor_height) != DEPTH_SENSOR_SIZE:
                raise ValueError(
                    f"the depth camera calibration must describe a 1024x1024 sensor, got "
                    f"{self.sensor_width}x{self.sensor_height}."
                )
            cx, cy, fx, fy = self.cx, self.cy, self.fx, self.fy
        elif isinstance(mode, ColorResolution):
            cx, cy, fx, fy = self.cx, self.cy, self.fx, self.fy
            w, h = self.sensor_width, self.sensor_height
            if w * 9 // 16 == h:
                info = _LEGACY_COLOR_WINDOW
                cx = (cx * info.binned_width - info.crop_x) / info.width
                cy = (cy * info.binned_height - info.crop_y) / info.height
                fx = fx * info.binned_width / info.width
                fy = fy * info.binned_height / info.height
            elif w * 3 // 4 != h:
                raise ValueError(
                    f"the color camera calibration must describe a 4:3 (or legacy 16:9) sensor, got {w}x{h}."
                )
        else:
            raise ValueError(f"expected a ColorResolution or DepthMode, got {mode!r}.")
        info = MODE_TABLE[mode]
        radius = self.metric_radius if self.metric_radius > 1e-4 else DEFAULT_METRIC_RADIUS
        return CameraModel(
            width=info.width,
            height=info.height,
            fx=fx * info.binned_width,
            fy=fy * info.binned_height,
            cx=cx * info.binned_width - info.crop_x - 0.5,
            cy=cy * info.binned_height - info.crop_y - 0.5,
            k1=self.k1, k2=self.k2, k3=self.k3, k4=self.k4, k5=self.k5, k6=self.k6,
            p1=self.p1, p2=self.p2, codx=self.codx, cody=self.cody,
            metric_radius=radius,
            model_type=self.model_type,
        )

    @classmethod
    def from_pixel_intrinsics(
        cls,
        mode: ColorResolution | DepthMode,
        fx: float,
        fy: float,
        cx: float,
        cy: float,
        *,
        T_camera_from_depth: RigidTransform | None = None,
        metric_radius: float = 0.0,
        **distortion: float,
    ) -> RawCamera:
        """The raw camera whose `camera_model(mode)` has these pixel intrinsics (the inverse of
        the mode scaling): for a renderer that picks a pixel camera and needs a device file.

        `distortion`: any of k1..k6, p1, p2 (default 0: a pinhole camera).
        """
        unknown = set(distortion) - {"k1", "k2", "k3", "k4", "k5", "k6", "p1", "p2"}
        if unknown:
            raise ValueError(f"unknown distortion parameters {sorted(unknown)}; expected k1..k6, p1, p2.")
        info = MODE_TABLE[mode]
        if isinstance(mode, DepthMode):
            sensor, location, purpose = DEPTH_SENSOR_SIZE, DEPTH_LOCATION, DEPTH_PURPOSE
        else:
            sensor, location, purpose = COLOR_SENSOR_SIZE, COLOR_LOCATION, COLOR_PURPOSE
        return cls(
            cx=(cx + 0.5 + info.crop_x) / info.binned_width,
            cy=(cy + 0.5 + info.crop_y) / info.binned_height,
            fx=fx / info.binned_width,
            fy=fy / info.binned_height,
            metric_radius=metric_radius,
            sensor_width=sensor[0],
            sensor_height=sensor[1],
            T_camera_from_depth=T_camera_from_depth or RigidTransform.identity(),
            location=location,
            purpose=purpose,
            **{k: float(v) for k, v in distortion.items()},
        )


def _default_inertial_sensors() -> tuple[dict, ...]:
    """A plausible gyro + accelerometer entry (identity mixing, zero bias), so that files we write
    have every section the Kinect SDK requires when it opens them."""
    # The IMU axes of an Azure Kinect are rotated against the depth camera's (x' = -y-ish, ...);
    # an exact device-like rotation is not needed by anything here, only a valid one.
    rotation = [0.0, 0.1045, -0.9945, -1.0, 0.0, 0.0, 0.0, 0.9945, 0.1045]

    def sensor(kind: str, mask: int, noise: float, uncertainty: float, translation: list[float]) -> dict:
        mixing = [0.0] * 36
        for i in (0, 16, 32):
            mixing[i] = 1.0
        return {
            "BiasTemperatureModel": [0.0] * 12,
            "BiasUncertainty": [uncertainty] * 3,
            "Id": "CALIBRATION_InertialSensorId_LSM6DSM",
            "MixingMatrixTemperatureModel": mixing,
            "ModelTypeMask": mask,
            "Noise": [noise] * 3 + [0.0] * 3,
            "Rt": {"Rotation": list(rotation), "Translation": translation},
            "SecondOrderScaling": [0.0] * 9,
            "SensorType": kind,
            "TemperatureBounds": [5.0, 60.0],
            "TemperatureC": 0.0,
        }

    return (
        sensor("CALIBRATION_InertialSensorType_Gyro", 16, 0.00095, 0.0001, [0.0, 0.0, 0.0]),
        sensor("CALIBRATION_InertialSensorType_Accelerometer", 56, 0.0107, 0.01, [-0.051, 0.0035, 0.0013]),
    )


@dataclass(frozen=True)
class RawCalibration:
    """The device calibration as stored in `calibration.json` (both cameras, all modes).

    `inertial_sensors` keeps the IMU entries as read (JSON objects), so files we write carry them.
    """

    depth: RawCamera
    color: RawCamera
    serial_number: str = ""
    factory_cal_date: str = ""
    device_name: str = "AzureKinect-PV"
    version: tuple[int, int] = (1, 2)
    notes: str = ""
    inertial_sensors: tuple[dict, ...] = field(default_factory=_default_inertial_sensors)

    @property
    def T_color_from_depth(self) -> RigidTransform:
        return self.color.T_camera_from_depth.compose(self.depth.T_camera_from_depth.inverse())

    def calibration(self, color_resolution: ColorResolution | str | int, depth_mode: DepthMode | str) -> K4aCalibration:
        """Camera models for one color resolution and depth mode."""
        color_resolution = ColorResolution.parse(color_resolution)
        depth_mode = DepthMode.parse(depth_mode)
        return K4aCalibration(
            depth=self.depth.camera_model(depth_mode),
            color=self.color.camera_model(color_resolution),
            T_color_from_depth=self.T_color_from_depth,
            color_resolution=color_resolution,
            depth_mode=depth_mode,
            raw=self,
        )

    def to_json(self, indent: int | None = 4) -> bytes:
        """The calibration as device-style `calibration.json` bytes (see `build_raw_calibration_json`)."""
        return build_raw_calibration_json(self, indent=indent)


# ----------------------------------------------------------------------------------------------
# Parsing and writing calibration.json


def _get(obj: Any, key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise ValueError(f"Kinect calibration JSON: {where} has no {key!r} entry.")
    value = obj[key]
    if kind is float:
        kind = (int, float)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"Kinect calibration JSON: {where}.{key} has the wrong type ({type(value).__name__}).")
    return value


def _numbers(values: Any, count: int, where: str) -> list[float]:
    if not isinstance(values, list) or len(values) < count:
        raise ValueError(f"Kinect calibration JSON: {where} must be a list of at least {count} numbers.")
    out = []
    for v in values[:count]:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"Kinect calibration JSON: {where} holds a non-number ({v!r}).")
        out.append(float(v))
    return out


def _parse_camera(camera: dict, where: str) -> RawCamera:
    intr = _get(camera, "Intrinsics", where, dict)
    model_type = _get(intr, "ModelType", where + ".Intrinsics", str)
    if model_type not in _SUPPORTED_MODELS:
        raise ValueError(
            f"Kinect calibration JSON: {where} uses lens model {model_type!r}; only Brown-Conrady "
            f"(and the legacy Rational6KT) are supported."
        )
    count = _get(intr, "ModelParameterCount", where + ".Intrinsics", int)
    if count < 14:
        raise ValueError(f"Kinect calibration JSON: {where} has {count} lens parameters, expected 14.")
    params = _numbers(_get(intr, "ModelParameters", where + ".Intrinsics", list), 14, where + ".ModelParameters")
    rt = _get(camera, "Rt", where, dict)
    rotation = _numbers(_get(rt, "Rotation", where + ".Rt", list), 9, where + ".Rt.Rotation")
    translation = _numbers(_get(rt, "Translation", where + ".Rt", list), 3, where + ".Rt.Translation")
    width = _get(camera, "SensorWidth", where, int)
    height = _get(camera, "SensorHeight", where, int)
    radius = float(_get(camera, "MetricRadius", where, float))
    R = np.array(rotation).reshape(3, 3)
    if abs(np.linalg.det(R) - 1.0) > 1e-3 or not np.allclose(R @ R.T, np.eye(3), atol=1e-3):
        raise ValueError(f"Kinect calibration JSON: {where}.Rt.Rotation is not a rotation matrix.")
    if np.abs(translation).max() > 1.0:
        # The device stores metres; a baseline over a metre means the file holds millimetres.
        raise ValueError(
            f"Kinect calibration JSON: {where}.Rt.Translation {translation} looks like millimetres; "
            f"calibration.json stores metres."
        )
    cx, cy, fx, fy, k1, k2, k3, k4, k5, k6, codx, cody, p2, p1 = params
    if not (fx > 0 and fy > 0):
        raise ValueError(f"Kinect calibration JSON: {where} has non-positive focal lengths ({fx}, {fy}).")
    return RawCamera(
        cx=cx, cy=cy, fx=fx, fy=fy, k1=k1, k2=k2, k3=k3, k4=k4, k5=k5, k6=k6,
        codx=codx, cody=cody, p2=p2, p1=p1, metric_radius=radius,
        sensor_width=width, sensor_height=height,
        T_camera_from_depth=RigidTransform(R, np.array(translation)),
        model_type=model_type,
        location=str(camera.get("Location", "")),
        purpose=str(camera.get("Purpose", "")),
    )


def parse_raw_calibration(data: bytes | bytearray | str | dict) -> RawCalibration:
    """Parse a Kinect `calibration.json` (bytes or text, as attached to an MKV, or its decoded dict).

    Raises ValueError with one sentence on invalid JSON or a missing/ill-typed entry.
    """
    if isinstance(data, dict):
        doc = data
    else:
        if isinstance(data, (bytes, bytearray)):
            # Device blobs end with a NUL terminator.
            data = bytes(data).rstrip(b"\x00").decode("utf-8", errors="strict")
        if not isinstance(data, str):
            raise ValueError(f"Kinect calibration must be JSON bytes, text or a dict, got {type(data).__name__}.")
        try:
            doc = json.loads(data.rstrip("\x00"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"Kinect calibration is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}.") from None
    info = _get(doc, "CalibrationInformation", "the document", dict)
    cameras = _get(info, "Cameras", "CalibrationInformation", list)
    found: dict[str, RawCamera] = {}
    for i, camera in enumerate(cameras):
        if not isinstance(camera, dict):
            raise ValueError(f"Kinect calibration JSON: Cameras[{i}] is not an object.")
        location = camera.get("Location")
        if location in (DEPTH_LOCATION, COLOR_LOCATION) and location not in found:
            found[location] = _parse_camera(camera, f"Cameras[{i}] ({location})")
    for location, name in ((DEPTH_LOCATION, "depth"), (COLOR_LOCATION, "color")):
        if location not in found:
            raise ValueError(f"Kinect calibration JSON has no {name} camera (Location {location}).")
    meta = info.get("Metadata", {}) if isinstance(info.get("Metadata", {}), dict) else {}
    version = meta.get("Version", {}) if isinstance(meta.get("Version", {}), dict) else {}
    inertial = info.get("InertialSensors", [])
    return RawCalibration(
        depth=found[DEPTH_LOCATION],
        color=found[COLOR_LOCATION],
        serial_number=str(meta.get("SerialId", "")),
        factory_cal_date=str(meta.get("FactoryCalDate", "")),
        device_name=str(meta.get("DeviceName", "")),
        version=(int(version.get("Major", 1)), int(version.get("Minor", 2))),
        notes=str(meta.get("Notes", "")),
        inertial_sensors=tuple(s for s in inertial if isinstance(s, dict)) if isinstance(inertial, list) else (),
    )


def read_raw_calibration(path: str | PathLike) -> RawCalibration:
    """Parse a `calibration.json` file; a missing or bad file raises InputError naming it."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise InputError(f"cannot read the Kinect calibration: {exc.strerror}", path=path) from None
    try:
        return parse_raw_calibration(data)
    except ValueError as exc:
        raise InputError(str(exc), path=path) from None


def _camera_json(camera: RawCamera) -> dict:
    T = camera.T_camera_from_depth
    return {
        "Intrinsics": {
            "ModelParameterCount": 14,
            "ModelParameters": [float(v) for v in camera.model_parameters],
            "ModelType": camera.model_type,
        },
        "Location": camera.location,
        "Purpose": camera.purpose,
        "MetricRadius": float(camera.metric_radius),
        "Rt": {
            "Rotation": [float(v) for v in T.R.reshape(-1)],
            "Translation": [float(v) for v in T.t],
        },
        "SensorHeight": int(camera.sensor_height),
        "SensorWidth": int(camera.sensor_width),
        "Shutter": "CALIBRATION_ShutterTypeUndefined",
        "ThermalAdjustmentParams": {"Params": [0.0] * 12},
    }


def build_raw_calibration_json(raw: RawCalibration, indent: int | None = 4) -> bytes:
    """Device-style `calibration.json` bytes for `raw` (depth camera first, then color, then IMU).

    Floats are written exactly (shortest round-trip repr), so
    `parse_raw_calibration(build_raw_calibration_json(raw)) == raw`.
    """
    depth = replace(raw.depth, location=raw.depth.location or DEPTH_LOCATION, purpose=raw.depth.purpose or DEPTH_PURPOSE)
    color = replace(raw.color, location=raw.color.location or COLOR_LOCATION, purpose=raw.color.purpose or COLOR_PURPOSE)
    if depth.location != DEPTH_LOCATION or color.location != COLOR_LOCATION:
        raise ValueError(
            f"the depth camera must have Location {DEPTH_LOCATION} and the color camera {COLOR_LOCATION}, "
            f"got {depth.location!r} and {color.location!r}."
        )
    doc = {
        "CalibrationInformation": {
            "Cameras": [_camera_json(depth), _camera_json(color)],
            "InertialSensors": [dict(s) for s in raw.inertial_sensors],
            "Metadata": {
                "SerialId": raw.serial_number,
                "FactoryCalDate": raw.factory_cal_date,
                "Version": {"Major": int(raw.version[0]), "Minor": int(raw.version[1])},
                "DeviceName": raw.device_name,
                "Notes": raw.notes,
            },
        }
    }
    return json.dumps(doc, indent=indent).encode("utf-8")


def synthetic_raw_calibration(
    serial_number: str = "000000000000",
    *,
    T_color_from_depth: RigidTransform | None = None,
    distortion: bool = True,
) -> RawCalibration:
    """A plausible device calibration (typical Azure Kinect values) for synthetic recordings.

    The depth camera's `Rt` is the identity; the color camera sits ~32 mm to the side and is
    tilted ~5 degrees as on a real device unless `T_color_from_depth` says otherwise.
    `distortion=False` gives pinhole cameras (what an OpenGL renderer produces).
    """
    if T_color_from_depth is None:
        tilt = math.radians(-4.95)
        R = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(tilt), -math.sin(tilt)], [0.0, math.sin(tilt), math.cos(tilt)]])
        T_color_from_depth = RigidTransform(R, [-0.032, -0.0022, 0.0039])
    depth_dist = dict(k1=0.55, k2=-0.02, k3=-0.0027, k4=0.89, k5=0.086, k6=-0.014, p1=2.0e-5, p2=-7.0e-5)
    color_dist = dict(k1=0.33, k2=-2.49, k3=1.45, k4=0.21, k5=-2.30, k6=1.38, p1=-1.6e-4, p2=-1.3e-4)
    if not distortion:
        depth_dist = {k: 0.0 for k in depth_dist}
        color_dist = {k: 0.0 for k in color_dist}
    depth = RawCamera(
        cx=0.5130, cy=0.5170, fx=0.4928, fy=0.4929, metric_radius=1.74 if distortion else 0.0,
        sensor_width=1024, sensor_height=1024, location=DEPTH_LOCATION, purpose=DEPTH_PURPOSE, **depth_dist,
    )
    color = RawCamera(
        cx=0.4998, cy=0.5066, fx=0.4780, fy=0.6374, metric_radius=0.0,
        sensor_width=4096, sensor_height=3072, T_camera_from_depth=T_color_from_depth,
        location=COLOR_LOCATION, purpose=COLOR_PURPOSE, **color_dist,
    )
    return RawCalibration(depth=depth, color=color, serial_number=serial_number, notes="synthetic")


# ----------------------------------------------------------------------------------------------
# Calibration for one pair of modes


@dataclass(frozen=True, eq=False)
class K4aCalibration:
    """Depth and color camera models of one device in one color resolution and depth mode.

    `T_color_from_depth` maps depth-camera points (metres) to color-camera points.
    """

    depth: CameraModel
    color: CameraModel
    T_color_from_depth: RigidTransform
    color_resolution: ColorResolution
    depth_mode: DepthMode
    raw: RawCalibration | None = None

    @classmethod
    def from_raw_json(
        cls,
        data: bytes | bytearray | str | dict,
        color_resolution: ColorResolution | str | int,
        depth_mode: DepthMode | str,
    ) -> K4aCalibration:
        """Parse `calibration.json` content and build the models for the given modes."""
        color_resolution = ColorResolution.parse(color_resolution)
        depth_mode = DepthMode.parse(depth_mode)
        return parse_raw_calibration(data).calibration(color_resolution, depth_mode)

    @property
    def T_depth_from_color(self) -> RigidTransform:
        return self.T_color_from_depth.inverse()

    @property
    def serial_number(self) -> str:
        return self.raw.serial_number if self.raw is not None else ""

    def to_raw_json(self) -> bytes:
        """The device `calibration.json` this calibration came from."""
        if self.raw is None:
            raise ValueError("this calibration was not built from a raw device calibration.")
        return build_raw_calibration_json(self.raw)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, K4aCalibration):
            return NotImplemented
        return (
            self.depth == other.depth
            and self.color == other.color
            and self.T_color_from_depth == other.T_color_from_depth
            and self.color_resolution == other.color_resolution
            and self.depth_mode == other.depth_mode
        )

    __hash__ = None  # type: ignore[assignment]
