"""The fitter's camera: the Kinect lens model on the host, landmark undistortion and per-pixel rays.

Landmarks are observed in the raw (distorted) colour image. Rather than differentiate through
the lens model, each observed landmark is undistorted once per frame to the ideal pinhole image
(`FitCamera.undistort_to_pinhole_px`), and the landmark term compares it with the plain pinhole
projection of the model: same pixel scale, simple analytic Jacobian.

The depth term uses projective association: a model vertex is projected with the full lens
model into the registered depth map (which lives in the raw colour image), the depth pixel it lands
on is lifted to 3D along that pixel's exact ray (a per-camera ray map), and the residual is the
point-to-plane distance to the plane fitted from the pixel's neighbours (Chen & Medioni 1992;
projective data association as in KinectFusion, Newcombe et al. 2011). Only a crop around the face
is converted per frame (`frame_prep.crop_depth`, `depth_term.lift_patches`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

__all__ = ["FitCamera", "distort_normalized", "undistort_normalized", "undistortion_grid", "sample_rays",
           "RAY_GRID_STEP"]

_DIST_NAMES = ("k1", "k2", "k3", "k4", "k5", "k6", "p1", "p2")


@dataclass(frozen=True)
class FitCamera:
    """A colour camera for the fitter: pinhole + optional Kinect (OpenCV rational) lens model.

    Attributes:
        fx, fy, cx, cy: pixels (pixel centres at integers).  width, height: pixels.
        distortion: (k1, k2, k3, k4, k5, k6, p1, p2) or None for an ideal pinhole:
            x_d = x·(1 + k1 r² + k2 r⁴ + k3 r⁶)/(1 + k4 r² + k5 r⁴ + k6 r⁶) + 2 p1 x y + p2 (r² + 2x²),
            y_d = y·(same) + p1 (r² + 2y²) + 2 p2 x y, with (x, y) normalized undistorted coordinates.
        max_radius: normalized radius beyond which the radial factor is held constant (the rational
            model folds over outside the field of view); None: no limit.
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    distortion: tuple[float, ...] | None = None
    max_radius: float | None = None

    def __post_init__(self) -> None:
        if not (self.fx > 0 and self.fy > 0):
            raise ValueError(f"focal lengths must be positive, got fx={self.fx}, fy={self.fy}")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")
        if self.distortion is not None and len(self.distortion) != 8:
            raise ValueError(f"distortion must be (k1..k6, p1, p2): 8 values, got {len(self.distortion)}")

    @classmethod
    def from_any(cls, obj) -> "FitCamera":
        """Accept a FitCamera, a k4a `CameraModel`, an `IntrinsicsJson`, a `RenderCamera`, or a dict."""
        if isinstance(obj, FitCamera):
            return obj
        get = (lambda k, d=None: obj.get(k, d)) if isinstance(obj, dict) else (lambda k, d=None: getattr(obj, k, d))
        try:
            fx, fy, cx, cy = (float(get(k)) for k in ("fx", "fy", "cx", "cy"))
            width, height = int(get("width")), int(get("height"))
        except (TypeError, ValueError):
            raise ValueError(
                f"camera intrinsics need fx, fy, cx, cy, width, height; got {type(obj).__name__}"
            ) from None
        # Named coefficients first: k4a's CameraModel also has a `distortion` property, in OpenCV's
        # (k1, k2, p1, p2, k3, ...) order, unlike RenderCamera's (k1..k6, p1, p2) tuple.
        if all(get(k) is not None for k in _DIST_NAMES):
            dist = [get(k) for k in _DIST_NAMES]
        else:
            dist = get("distortion")
        dist_t = None
        if dist is not None:
            dist_t = tuple(float(d) for d in np.asarray(dist, dtype=np.float64).ravel())
            if not any(dist_t):
                dist_t = None
        radius = get("max_radius") or get("metric_radius")
        return cls(fx, fy, cx, cy, width, height, dist_t, float(radius) if radius else None)

    # -- lens model -------------------------------------------------------------------------

    @property
    def radial_limit_r2(self) -> float:
        """Squared normalized radius beyond which the radial factor is held constant (inf: none)."""
        return np.inf if self.max_radius is None else float(self.max_radius) ** 2

    def distort(self, xy: np.ndarray) -> np.ndarray:
        """Normalized undistorted (..., 2) -> normalized distorted (..., 2), float64."""
        xy = np.asarray(xy, dtype=np.float64)
        if self.distortion is None:
            return xy.copy()
        return distort_normalized(xy, np.asarray(self.distortion, np.float64), self.radial_limit_r2)

    def undistort(self, uv: np.ndarray, iterations: int = 30) -> np.ndarray:
        """Raw pixels (..., 2) -> normalized undistorted (x, y) (..., 2), float64 (fixed-point inversion)."""
        uv = np.asarray(uv, dtype=np.float64)
        xd = np.stack([(uv[..., 0] - self.cx) / self.fx, (uv[..., 1] - self.cy) / self.fy], axis=-1)
        if self.distortion is None:
            return xd
        return undistort_normalized(xd, np.asarray(self.distortion, np.float64), self.radial_limit_r2, iterations)

    def undistort_to_pinhole_px(self, uv: np.ndarray) -> np.ndarray:
        """Raw pixels (..., 2) -> where an ideal pinhole with the same fx, fy, cx, cy would see them."""
        xy = self.undistort(uv)
        return np.stack([xy[..., 0] * self.fx + self.cx, xy[..., 1] * self.fy + self.cy], axis=-1)

    def project_torch(self, points_cam: torch.Tensor) -> torch.Tensor:
        """Camera-frame points (M, 3) metres -> raw (distorted) pixels (M, 2); z must be > 0."""
        z = points_cam[:, 2].clamp_min(1e-6)
        x, y = points_cam[:, 0] / z, points_cam[:, 1] / z
        if self.distortion is not None:
            k1, k2, k3, k4, k5, k6, p1, p2 = self.distortion
            r2 = x * x + y * y
            r2c = r2.clamp_max(self.radial_limit_r2) if self.max_radius is not None else r2
            radial = (1 + r2c * (k1 + r2c * (k2 + r2c * k3))) / (1 + r2c * (k4 + r2c * (k5 + r2c * k6)))
            x, y = (x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
                    y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y)
        return torch.stack([x * self.fx + self.cx, y * self.fy + self.cy], dim=1)

    def ray_map(self, device) -> torch.Tensor:
        """Normalized undistorted (x, y) of every pixel centre: float32 (H, W, 2) on `device`, cached."""
        return _ray_map(self, str(device))


def distort_normalized(xy: np.ndarray, coeffs: np.ndarray, r2_limit) -> np.ndarray:
    """The lens model on normalized coordinates, vectorized over points and cameras.

    Args:
        xy: (..., 2) normalized undistorted coordinates.
        coeffs: (8,) or (..., 8) k1..k6, p1, p2 per point (broadcast against xy's leading shape).
        r2_limit: scalar or (...,) squared radius beyond which the radial factor is held constant.
    Returns:
        (..., 2) normalized distorted coordinates, float64.
    """
    k1, k2, k3, k4, k5, k6, p1, p2 = np.moveaxis(np.asarray(coeffs, np.float64), -1, 0)
    x, y = xy[..., 0], xy[..., 1]
    r2 = x * x + y * y
    r2c = np.minimum(r2, r2_limit)
    radial = (1 + r2c * (k1 + r2c * (k2 + r2c * k3))) / (1 + r2c * (k4 + r2c * (k5 + r2c * k6)))
    return np.stack([x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
                     y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y], axis=-1)


def undistort_normalized(xd: np.ndarray, coeffs: np.ndarray, r2_limit, iterations: int = 30) -> np.ndarray:
    """Invert `distort_normalized` by fixed-point iteration (xd (..., 2) distorted -> undistorted),
    vectorized over points with per-point coefficients, float64."""
    xy = np.array(xd, dtype=np.float64)
    for _ in range(int(iterations)):
        xy -= distort_normalized(xy, coeffs, r2_limit) - xd
    return xy


# Pixels between the nodes of a camera's undistortion grid: the field is smooth, so inverting the
# lens model on this grid and interpolating bilinearly is far below the depth noise and ~50x cheaper.
RAY_GRID_STEP = 8


@lru_cache(maxsize=64)
def undistortion_grid(camera: FitCamera) -> np.ndarray:
    """Normalized undistorted (x, y) at pixels (i·8, j·8): float32 (Gv, Gu, 2), covering the image.

    `sample_rays` interpolates it (bilinear, align_corners) at any pixel; node (j, i) is pixel
    (j·RAY_GRID_STEP, i·RAY_GRID_STEP).
    """
    step = RAY_GRID_STEP
    gu = np.arange(0, int(camera.width) + step, step, dtype=np.float64)
    gv = np.arange(0, int(camera.height) + step, step, dtype=np.float64)
    return camera.undistort(np.stack(np.meshgrid(gu, gv, indexing="xy"), -1)).astype(np.float32)


def sample_rays(grid: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Rays at pixels from undistortion grids (one `grid_sample` for the whole batch).

    Args:
        grid: (P, 2, Gv, Gu) per image its `undistortion_grid`, channels first (padding beyond a
            smaller camera's grid is never sampled inside its image).
        u, v: (P, H, W) pixel coordinates (pixel centres at integers).
    Returns:
        (P, H, W, 2) normalized undistorted (x, y).
    """
    gv, gu = grid.shape[-2:]
    coords = torch.stack([u / (RAY_GRID_STEP * (gu - 1)) * 2 - 1, v / (RAY_GRID_STEP * (gv - 1)) * 2 - 1], -1)
    return torch.nn.functional.grid_sample(grid, coords, mode="bilinear", align_corners=True).permute(0, 2, 3, 1)


@lru_cache(maxsize=16)
def _ray_map(camera: FitCamera, device: str) -> torch.Tensor:
    w, h = int(camera.width), int(camera.height)
    grid = torch.as_tensor(undistortion_grid(camera)).permute(2, 0, 1)[None]
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return sample_rays(grid, u[None], v[None])[0].contiguous().to(device)
