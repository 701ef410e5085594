"""Camera-side pieces of the fitter: lens model, landmark targets, depth patches, projective association.

Landmarks are observed in the raw (distorted) colour image. Rather than differentiate through
the lens model, each observed landmark is undistorted once per frame to the ideal pinhole image
(`FitCamera.undistort_to_pinhole_px`), and the landmark term compares it with the plain pinhole
projection of the model: same pixel scale, simple analytic Jacobian.

The depth term uses projective association: a model vertex is projected with the full lens
model into the registered depth map (which lives in the raw colour image), the depth pixel it lands
on is lifted to 3D along that pixel's exact ray (a per-camera ray map), and the residual is the
point-to-plane distance to the plane fitted from the pixel's neighbours (Chen & Medioni 1992;
projective data association as in KinectFusion, Newcombe et al. 2011). Only a crop around the face
is converted per frame (`DepthPatch`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

__all__ = ["FitCamera", "DepthPatch", "PatchSet", "make_depth_patch", "project_pinhole"]

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

    def _radial_limit_r2(self) -> float:
        return np.inf if self.max_radius is None else float(self.max_radius) ** 2

    def distort(self, xy: np.ndarray) -> np.ndarray:
        """Normalized undistorted (..., 2) -> normalized distorted (..., 2), float64."""
        xy = np.asarray(xy, dtype=np.float64)
        if self.distortion is None:
            return xy.copy()
        k1, k2, k3, k4, k5, k6, p1, p2 = self.distortion
        x, y = xy[..., 0], xy[..., 1]
        r2 = x * x + y * y
        r2c = np.minimum(r2, self._radial_limit_r2())
        radial = (1 + r2c * (k1 + r2c * (k2 + r2c * k3))) / (1 + r2c * (k4 + r2c * (k5 + r2c * k6)))
        return np.stack([x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
                         y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y], axis=-1)

    def undistort(self, uv: np.ndarray, iterations: int = 30) -> np.ndarray:
        """Raw pixels (..., 2) -> normalized undistorted (x, y) (..., 2), float64 (fixed-point inversion)."""
        uv = np.asarray(uv, dtype=np.float64)
        xd = np.stack([(uv[..., 0] - self.cx) / self.fx, (uv[..., 1] - self.cy) / self.fy], axis=-1)
        if self.distortion is None:
            return xd
        xy = xd.copy()
        for _ in range(iterations):
            xy = xy - (self.distort(xy) - xd)
        return xy

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
            r2c = r2.clamp_max(self._radial_limit_r2()) if self.max_radius is not None else r2
            radial = (1 + r2c * (k1 + r2c * (k2 + r2c * k3))) / (1 + r2c * (k4 + r2c * (k5 + r2c * k6)))
            x, y = (x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
                    y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y)
        return torch.stack([x * self.fx + self.cx, y * self.fy + self.cy], dim=1)

    def ray_map(self, device) -> torch.Tensor:
        """Normalized undistorted (x, y) of every pixel centre: float32 (H, W, 2) on `device`, cached."""
        return _ray_map(self, str(device))


@lru_cache(maxsize=16)
def _ray_map(camera: FitCamera, device: str) -> torch.Tensor:
    w, h = int(camera.width), int(camera.height)
    if camera.distortion is None:
        u = (torch.arange(w, dtype=torch.float32) - camera.cx) / camera.fx
        v = (torch.arange(h, dtype=torch.float32) - camera.cy) / camera.fy
        return torch.stack(torch.meshgrid(u, v, indexing="xy"), -1).to(device)
    # The undistortion field is smooth: invert the lens model on a coarse grid (every 8 px) and
    # interpolate bilinearly; the error is far below the depth noise and it costs ~50x less.
    step = 8
    gu = np.arange(0, w + step, step, dtype=np.float64)
    gv = np.arange(0, h + step, step, dtype=np.float64)
    grid = camera.undistort(np.stack(np.meshgrid(gu, gv, indexing="xy"), -1))  # (Gv, Gu, 2)
    g = torch.as_tensor(grid, dtype=torch.float32).permute(2, 0, 1)[None]  # (1, 2, Gv, Gu)
    # Pixel p sits at fractional grid position p / step; map that onto align_corners=True coordinates.
    pu = torch.arange(w, dtype=torch.float32) / (step * (len(gu) - 1)) * 2 - 1
    pv = torch.arange(h, dtype=torch.float32) / (step * (len(gv) - 1)) * 2 - 1
    sample = torch.stack(torch.meshgrid(pu, pv, indexing="xy"), -1)[None]  # (1, H, W, 2)
    rays = torch.nn.functional.grid_sample(g, sample, mode="bilinear", align_corners=True)[0]
    return rays.permute(1, 2, 0).contiguous().to(device)


def project_pinhole(points_cam: torch.Tensor, fx: float, fy: float, cx: float, cy: float):
    """Pinhole projection and its Jacobian.

    Args:
        points_cam: (M, 3) camera-frame points, metres (z > 0).
    Returns:
        (uv (M, 2) pixels, d_uv_d_point (M, 2, 3) pixels per metre).
    """
    x, y, z = points_cam[:, 0], points_cam[:, 1], points_cam[:, 2].clamp_min(1e-6)
    iz = 1.0 / z
    uv = torch.stack([fx * x * iz + cx, fy * y * iz + cy], 1)
    zero = torch.zeros_like(z)
    j = torch.stack([
        torch.stack([fx * iz, zero, -fx * x * iz * iz], 1),
        torch.stack([zero, fy * iz, -fy * y * iz * iz], 1),
    ], 1)
    return uv, j


@dataclass
class DepthPatch:
    """A crop of one camera's registered depth map, lifted to 3D (camera frame, metres).

    Attributes:
        x0, y0: top-left pixel of the crop in the full image.  width, height: crop size in samples.
        stride: pixel step between samples (the crop keeps every stride-th pixel of every
            stride-th row: projective association does not need every pixel, and a 2-pixel grid is
            ~1.5 mm at 0.7 m, finer than the depth noise).
        points: float32 (h*w, 3), zeros where invalid.  normals: float32 (h*w, 3) unit, facing the
            camera.  valid: bool (h*w,) pixel has depth and a well-defined normal.
    """

    x0: int
    y0: int
    width: int
    height: int
    points: torch.Tensor
    normals: torch.Tensor
    valid: torch.Tensor
    stride: int = 1

    @property
    def n_valid(self) -> int:
        return int(self.valid.sum())


def make_depth_patch(
    depth_mm: np.ndarray,
    camera: FitCamera,
    bbox: tuple[int, int, int, int],
    device,
    stride: int = 1,
    max_jump_m: float = 0.02,
    normal_radius_px: int = 4,
) -> DepthPatch | None:
    """Crop `depth_mm` to bbox = (x0, y0, x1, y1) (exclusive end, clipped to the image) and lift it.

    Every `stride`-th pixel is kept; the points are the measured ones. Normals come from central
    differences `normal_radius_px` pixels away on each side, on depth averaged over a window of
    the same radius (valid pixels only): a Kinect's ~1-2 mm per-pixel noise over a 2-pixel
    baseline would tilt normals by tens of degrees and bias the point-to-plane term. Samples with a
    missing neighbour, or a neighbour or window mean more than `max_jump_m` away in depth
    (silhouette edges, mixed pixels), are invalid. Returns None when the clipped crop is empty.
    """
    h_img, w_img = depth_mm.shape
    stride = max(int(stride), 1)
    s = max(1, int(round(normal_radius_px / stride)))  # neighbour offset and window radius, in samples
    x0, y0, x1, y1 = bbox
    x0, y0 = max(int(x0), 0), max(int(y0), 0)
    x1, y1 = min(int(x1), w_img), min(int(y1), h_img)
    if x1 - x0 <= 2 * s * stride or y1 - y0 <= 2 * s * stride:
        return None
    crop = np.ascontiguousarray(depth_mm[y0:y1:stride, x0:x1:stride]).astype(np.float32)
    z = torch.from_numpy(crop).to(device) * 1e-3
    h, w = z.shape
    rays = camera.ray_map(device)[y0:y1:stride, x0:x1:stride]
    pts = torch.cat([rays * z[..., None], z[..., None]], -1)  # (h, w, 3)
    has = (z > 0).to(z.dtype)
    k = 2 * s + 1
    num = torch.nn.functional.avg_pool2d((z * has)[None, None], k, stride=1, padding=s)[0, 0]
    den = torch.nn.functional.avg_pool2d(has[None, None], k, stride=1, padding=s)[0, 0]
    zs = num / den.clamp_min(1e-6)
    ok = (has > 0) & ((zs - z).abs() < 0.5 * max_jump_m)
    ps = torch.cat([rays * zs[..., None], zs[..., None]], -1)
    zp = torch.nn.functional.pad(z, (s, s, s, s))
    pp = torch.nn.functional.pad(ps.permute(2, 0, 1), (s, s, s, s)).permute(1, 2, 0)
    right, left = pp[s:s + h, 2 * s:2 * s + w], pp[s:s + h, 0:w]
    down, up = pp[2 * s:2 * s + h, s:s + w], pp[0:h, s:s + w]
    for zn in (zp[s:s + h, 2 * s:2 * s + w], zp[s:s + h, 0:w], zp[2 * s:2 * s + h, s:s + w], zp[0:h, s:s + w]):
        ok &= (zn > 0) & ((zn - z).abs() < max_jump_m)
    # x right, y down: cross(down - up, right - left) points towards the camera for a frontal plane.
    n = torch.linalg.cross(down - up, right - left, dim=-1)
    norm = torch.linalg.norm(n, dim=-1)
    ok &= norm > 1e-12
    n = n / norm.clamp_min(1e-12)[..., None]
    flip = (n * pts).sum(-1) > 0
    n = torch.where(flip[..., None], -n, n)
    return DepthPatch(x0, y0, w, h, pts.reshape(-1, 3), n.reshape(-1, 3), ok.reshape(-1), stride)


class PatchSet:
    """Several cameras' depth patches packed for batched association (one set of ops for K cameras).

    Args:
        cameras: the K cameras (FitCamera) that have a patch.
        patches: their DepthPatch, same order.
        r_cam_from_ref: (K, 3, 3), t_cam_from_ref: (K, 3) tensors (reference -> camera).
    """

    def __init__(self, cameras: list[FitCamera], patches: list[DepthPatch], r_cam_from_ref: torch.Tensor,
                 t_cam_from_ref: torch.Tensor):
        if not cameras or len(cameras) != len(patches):
            raise ValueError("PatchSet needs one patch per camera and at least one camera")
        dev, dt = r_cam_from_ref.device, r_cam_from_ref.dtype
        self.k = len(cameras)
        self.r = r_cam_from_ref
        self.t = t_cam_from_ref

        def col(values) -> torch.Tensor:
            return torch.tensor(values, dtype=dt, device=dev)[:, None]

        self.fx = col([c.fx for c in cameras])
        self.fy = col([c.fy for c in cameras])
        self.cx = col([c.cx for c in cameras])
        self.cy = col([c.cy for c in cameras])
        dist = [c.distortion or (0.0,) * 8 for c in cameras]
        self.has_distortion = any(c.distortion is not None for c in cameras)
        self.dist = [col([d[i] for d in dist]) for i in range(8)]
        # A limit of 1e12 is "no limit" for the clamp below.
        self.r2_limit = col([min(c._radial_limit_r2(), 1e12) for c in cameras])
        self.x0 = col([p.x0 for p in patches])
        self.y0 = col([p.y0 for p in patches])
        self.stride = col([p.stride for p in patches])
        self.width = torch.tensor([p.width for p in patches], dtype=torch.int64, device=dev)[:, None]
        self.height = torch.tensor([p.height for p in patches], dtype=torch.int64, device=dev)[:, None]
        sizes = [p.width * p.height for p in patches]
        self.offset = torch.tensor(np.cumsum([0] + sizes[:-1]), dtype=torch.int64, device=dev)[:, None]
        self.points = torch.cat([p.points for p in patches])
        self.normals = torch.cat([p.normals for p in patches])
        self.valid = torch.cat([p.valid for p in patches])

    def to_cameras(self, points_ref: torch.Tensor) -> torch.Tensor:
        """(M, 3) reference-frame points -> (K, M, 3) in each camera's frame."""
        return torch.einsum("kij,mj->kmi", self.r, points_ref) + self.t[:, None, :]

    def project(self, points_cam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, M, 3) camera-frame points -> raw pixel coordinates u, v (K, M) with each lens model."""
        z = points_cam[..., 2].clamp_min(1e-6)
        x, y = points_cam[..., 0] / z, points_cam[..., 1] / z
        if self.has_distortion:
            k1, k2, k3, k4, k5, k6, p1, p2 = self.dist
            r2 = x * x + y * y
            r2c = torch.minimum(r2, self.r2_limit)
            radial = (1 + r2c * (k1 + r2c * (k2 + r2c * k3))) / (1 + r2c * (k4 + r2c * (k5 + r2c * k6)))
            x, y = (x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
                    y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y)
        return x * self.fx + self.cx, y * self.fy + self.cy

    def associate(self, points_cam: torch.Tensor, normals_cam: torch.Tensor | None, gate_m: float,
                  min_normal_cos: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Projective association of model points with each camera's patch.

        Args:
            points_cam: (K, M, 3) model points in each camera's frame, metres.
            normals_cam: (K, M, 3) model normals in each camera's frame, or None (no orientation test).
            gate_m: reject pairs farther apart than this (occlusion, background, wrong surface).
            min_normal_cos: reject pairs whose normals disagree more, and model points facing away
                from the camera (they cannot be the surface it sees).
        Returns:
            (ok bool (K, M), target points (K, M, 3), target normals (K, M, 3)); rows with ok False
            hold junk (finite).
        """
        u_px, v_px = self.project(points_cam)
        u = torch.round((u_px - self.x0) / self.stride).long()
        v = torch.round((v_px - self.y0) / self.stride).long()
        inside = (u >= 0) & (u < self.width) & (v >= 0) & (v < self.height) & (points_cam[..., 2] > 0)
        idx = torch.where(inside, self.offset + v * self.width + u, torch.zeros_like(u))
        ok = inside & self.valid[idx]
        p = self.points[idx]
        n = self.normals[idx]
        ok &= torch.linalg.norm(points_cam - p, dim=-1) < gate_m
        if normals_cam is not None:
            ok &= (normals_cam * n).sum(-1) > min_normal_cos
            ok &= (normals_cam * points_cam).sum(-1) < 0
        return ok, p, n
