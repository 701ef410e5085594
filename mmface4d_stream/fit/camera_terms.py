"""The fitter's camera: its view of the one lens model (`k4a.camera_model.CameraModel`), landmark
undistortion and per-pixel rays.

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

Per-camera tables: a camera observation carries the whole image's camera and its crop's offset
(`CameraObservation.offset_px`), so the undistortion grid and ray map below are built once per
physical camera (a cache hit per frame) and sampled at the crop's pixels, instead of once per
moving crop box.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from mmface4d_stream.k4a.camera_model import BROWN_CONRADY, CameraModel

__all__ = ["FitCamera", "undistortion_grid", "sample_rays", "RAY_GRID_STEP"]

_DIST_NAMES = ("k1", "k2", "k3", "k4", "k5", "k6", "p1", "p2")


@dataclass(frozen=True)
class FitCamera:
    """The fitter's view of a colour camera: the values its batched (GPU) terms read, with every lens
    computation delegated to the one lens model, `k4a.camera_model.CameraModel` (`self.model`).

    Attributes:
        fx, fy, cx, cy: pixels (pixel centres at integers).  width, height: pixels.
        distortion: (k1, k2, k3, k4, k5, k6, p1, p2) or None for an ideal pinhole (Brown–Conrady
            with the rational radial term, distortion centre at the principal point).
        max_radius: the lens model's metric radius (normalized); None: no limit.

    What the fitter settles differently from the plain lens model, by design: its projection is
    `CameraModel.project(..., finite=True)` (finite and differentiable everywhere: Z clamped, the
    radial factor held beyond the metric radius) and its undistortion the matching
    `unproject_to_rays(..., finite=True)`. Lens models the batched terms do not implement (a
    distortion centre off the principal point, the legacy Rational6KT tangential factor) are
    refused by `from_model` rather than approximated.
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
        coeffs = dict(zip(_DIST_NAMES, self.distortion or (0.0,) * 8))
        model = CameraModel(int(self.width), int(self.height), float(self.fx), float(self.fy), float(self.cx),
                            float(self.cy), metric_radius=math.inf if self.max_radius is None else float(self.max_radius),
                            **{k: float(v) for k, v in coeffs.items()})
        object.__setattr__(self, "model", model)

    @classmethod
    def from_model(cls, model: CameraModel) -> "FitCamera":
        """The fitter's view of a k4a `CameraModel` (Brown–Conrady, distortion centre at the
        principal point: what the batched terms and the GL shaders implement)."""
        if not isinstance(model, CameraModel):
            raise ValueError(f"expected a k4a CameraModel, got {type(model).__name__}")
        if model.model_type != BROWN_CONRADY or model.codx != 0.0 or model.cody != 0.0:
            raise ValueError(
                "the fitter implements the Brown-Conrady lens model centred at the principal point "
                f"(codx = cody = 0); got {model.model_type} with codx={model.codx}, cody={model.cody}"
            )
        dist = tuple(float(getattr(model, k)) for k in _DIST_NAMES)
        radius = model.metric_radius if math.isfinite(model.metric_radius) else None
        return cls(model.fx, model.fy, model.cx, model.cy, model.width, model.height,
                   dist if any(dist) else None, radius)

    @classmethod
    def of(cls, camera) -> "FitCamera":
        """A `FitCamera` as it is, a k4a `CameraModel` (`from_model`), a mapping of `CameraModel`'s
        fields (the camera records of a synthetic capture's cameras.json), or a camera description
        with a `camera_model()` method (`formats.intrinsics.IntrinsicsJson`)."""
        if isinstance(camera, FitCamera):
            return camera
        if isinstance(camera, CameraModel):
            return cls.from_model(camera)
        if isinstance(camera, Mapping):
            try:
                return cls.from_model(CameraModel(**camera))
            except TypeError as exc:
                raise ValueError(f"a camera mapping must hold CameraModel's fields: {exc}") from None
        to_model = getattr(camera, "camera_model", None)
        if callable(to_model):
            return cls.from_model(to_model())
        raise ValueError(
            f"camera intrinsics must be a FitCamera, a k4a CameraModel or have camera_model(); got {type(camera).__name__}"
        )

    # -- lens model (CameraModel's) ------------------------------------------------------------

    @property
    def radial_limit_r2(self) -> float:
        """Squared normalized radius beyond which the radial factor is held constant (inf: none)."""
        return self.model.radial_limit_r2

    def distort(self, xy: np.ndarray) -> np.ndarray:
        """Normalized undistorted (..., 2) -> normalized distorted (..., 2), float64."""
        xy = np.asarray(xy, dtype=np.float64)
        xd, yd, _ = self.model.distort(xy[..., 0], xy[..., 1], finite=True)
        return np.stack([xd, yd], axis=-1)

    def undistort(self, uv: np.ndarray) -> np.ndarray:
        """Raw pixels (..., 2) -> normalized undistorted (x, y) (..., 2), float64 (`CameraModel`'s
        Gauss–Newton unprojection, finite everywhere)."""
        uv = np.asarray(uv, dtype=np.float64)
        return self.model.unproject_to_rays(uv, finite=True).points[..., :2]

    def undistort_to_pinhole_px(self, uv: np.ndarray) -> np.ndarray:
        """Raw pixels (..., 2) -> where an ideal pinhole with the same fx, fy, cx, cy would see them."""
        xy = self.undistort(uv)
        return np.stack([xy[..., 0] * self.fx + self.cx, xy[..., 1] * self.fy + self.cy], axis=-1)

    def project_torch(self, points_cam: torch.Tensor) -> torch.Tensor:
        """Camera-frame points (M, 3) metres -> raw (distorted) pixels (M, 2), finite and differentiable."""
        return self.model.project(points_cam, finite=True).pixels

    def ray_map(self, device) -> torch.Tensor:
        """Normalized undistorted (x, y) of every pixel centre: float32 (H, W, 2) on `device`, built
        once per camera and device (slice it with a window's offset instead of cropping the camera)."""
        return _ray_map(self, str(device))


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
