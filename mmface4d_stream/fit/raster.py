"""Rasterized building blocks for dense depth/colour terms: triangle ids, barycentrics, interpolation.

A *view* is one mesh in one camera's frame together with a crop box of that camera's raw
(distorted) image. `rasterize` gives, per crop pixel, the id of the visible triangle (-1 where
none) and the perspective-correct barycentrics (b0, b1) of its vertices 0 and 1 (vertex 2 weighs
1 - b0 - b1), as `RasterOutput`. Two backends, one interface and one convention:

- "gl" (CPU, any machine): OpenGL through moderngl/EGL (`render/raster_ids.py`), the Kinect lens
  model applied to every vertex in the vertex shader, as `render/renderer.py` draws.
- "nvdiffrast" (CUDA): nvdiffrast's CUDA rasterizer (optional extra `gpu`, package
  `diffrp-nvdiffrast`, imported on first use). The lens model is applied to the vertices in torch
  (`clip_coordinates`) and nvdiffrast rasterizes the resulting clip-space positions.

Both rasterize straight edges between distorted vertices (sub-pixel exact for face meshes whose
edges span a few pixels), pixel centres at integers, row 0 = the crop's top row.

Then, in torch, differentiable with the rasterization held fixed (as nvdiffrast's `interpolate`):
`interpolate` (per-vertex attributes at pixels), `model_depth` (camera-space z of the model at each
pixel) and `ray_plane_depth` (z where each pixel's exact undistorted ray meets its triangle's
plane, the quantity a depth camera reports). Gradients reach the attributes / vertices, never the
ids.
"""

from __future__ import annotations

import logging
from typing import NamedTuple, Sequence

import numpy as np
import torch

from mmface4d_stream.fit.camera_terms import FitCamera
from mmface4d_stream.fit.fitter_config import RASTER_BACKENDS

logger = logging.getLogger(__name__)

__all__ = [
    "RasterOutput",
    "Interpolated",
    "Rasterizer",
    "GLRasterizer",
    "NvdiffrastRasterizer",
    "make_rasterizer",
    "rasterize",
    "clip_coordinates",
    "crop_rays",
    "interpolate",
    "gather_corners",
    "model_depth",
    "ray_plane_depth",
    "load_nvdiffrast",
    "nvdiffrast_available",
]


class RasterOutput(NamedTuple):
    """Rasterization of B views into crops of common size (H, W).

    tri_ids: int32 (B, H, W), index into the triangles, -1 = background (no surface, outside the
        view's own crop box or its camera's image).
    barycentrics: float32 (B, H, W, 2), perspective-correct weights of the triangle's vertices 0 and
        1 (vertex 2: 1 - b0 - b1); zero on background.
    crops: int64 (B, 4) x0, y0, w, h of each view's crop in its camera's raw image, pixels; output
        pixel (i, j) of view b is raw pixel (x0 + j·stride, y0 + i·stride).
    backend: "gl" or "nvdiffrast".
    stride: raw pixels between output pixels (1: full resolution).
    """

    tri_ids: torch.Tensor
    barycentrics: torch.Tensor
    crops: torch.Tensor
    backend: str
    stride: int = 1

    @property
    def mask(self) -> torch.Tensor:
        """bool (B, H, W): pixels that see a triangle."""
        return self.tri_ids >= 0


class Interpolated(NamedTuple):
    """values: (B, H, W, D) attributes at pixels (zero on background); mask: bool (B, H, W)."""

    values: torch.Tensor
    mask: torch.Tensor


# -- inputs -------------------------------------------------------------------------------------


def _as_crops(crops, B: int) -> np.ndarray:
    c = np.asarray(crops, dtype=np.int64).reshape(-1, 4) if not isinstance(crops, torch.Tensor) \
        else crops.detach().cpu().numpy().astype(np.int64).reshape(-1, 4)
    if len(c) == 1 and B > 1:
        c = np.repeat(c, B, axis=0)
    if len(c) != B:
        raise ValueError(f"need one crop box (x0, y0, w, h) per view: {B} views, {len(c)} crops")
    if (c[:, 2] <= 0).any() or (c[:, 3] <= 0).any():
        raise ValueError(f"crop boxes need positive w and h, got {c.tolist()}")
    return c


def _as_cameras(cameras, B: int) -> list[FitCamera]:
    if isinstance(cameras, FitCamera) or not isinstance(cameras, Sequence):
        cameras = [cameras]
    cams = [FitCamera.of(c) for c in cameras]
    if len(cams) == 1 and B > 1:
        cams = cams * B
    if len(cams) != B:
        raise ValueError(f"need one camera per view: {B} views, {len(cams)} cameras")
    return cams


def _check_vertices(vertices) -> torch.Tensor:
    v = torch.as_tensor(vertices)
    if v.ndim == 2:
        v = v[None]
    if v.ndim != 3 or v.shape[-1] != 3:
        raise ValueError(f"vertices must be (B, N, 3), got {tuple(v.shape)}")
    return v


# -- shared geometry ----------------------------------------------------------------------------


def clip_coordinates(vertices: torch.Tensor, cameras: Sequence[FitCamera], crops, height: int, width: int,
                     near: float = 0.05, far: float = 20.0, stride: int = 1) -> torch.Tensor:
    """Clip-space positions of camera-frame vertices for crops of size (height, width).

    Each vertex goes through its view's full lens model (raw pixel u, v, centres at integers);
    the crop maps raw pixel (x0 + j·s, y0 + i·s), s = stride, to normalized device coordinates
    ((j + 0.5) / W·2 - 1, (i + 0.5) / H·2 - 1) (nvdiffrast's and OpenGL's pixel centres; row 0 at
    y = -1, read first), and w = z so that barycentrics are perspective-correct. The same mapping as
    `render/raster_ids.py`'s vertex shader.

    Args:
        vertices: (B, N, 3) camera-frame positions, metres.
        cameras: B `FitCamera`s.  crops: (B, 4) x0, y0, w, h pixels.  height, width: output size.
        near, far: clip range along z, metres.  stride: raw pixels per output pixel.
    Returns:
        (B, N, 4) float32 clip coordinates (x, y, z, w), on the vertices' device.
    """
    v = _check_vertices(vertices)
    B = v.shape[0]
    cams = _as_cameras(cameras, B)
    c = _as_crops(crops, B)
    out = []
    for b in range(B):
        p = v[b].to(torch.float32)
        z = p[:, 2]
        zs = torch.where(z.abs() < 1e-9, torch.full_like(z, 1e-9), z)
        x, y = p[:, 0] / zs, p[:, 1] / zs
        cam = cams[b]
        if cam.distortion is not None:
            k1, k2, k3, k4, k5, k6, p1, p2 = cam.distortion
            r2 = x * x + y * y
            r2c = r2.clamp_max(float(cam.max_radius) ** 2) if cam.max_radius is not None else r2
            radial = (1 + r2c * (k1 + r2c * (k2 + r2c * k3))) / (1 + r2c * (k4 + r2c * (k5 + r2c * k6)))
            x, y = (x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
                    y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y)
        u = x * cam.fx + cam.cx
        vv = y * cam.fy + cam.cy
        ndc_x = (u - float(c[b, 0]) + 0.5 * stride) / float(width * stride) * 2 - 1
        ndc_y = (vv - float(c[b, 1]) + 0.5 * stride) / float(height * stride) * 2 - 1
        zc = (far + near) / (far - near) * z - 2 * far * near / (far - near)
        out.append(torch.stack([ndc_x * z, ndc_y * z, zc, z], dim=-1))
    return torch.stack(out)


def _background_outside(ids: torch.Tensor, cams: Sequence[FitCamera], crops: np.ndarray, stride: int = 1) -> torch.Tensor:
    """Set ids to -1 beyond each view's own crop size and outside its camera's image."""
    B, H, W = ids.shape
    jj = torch.arange(W, device=ids.device) * stride
    ii = torch.arange(H, device=ids.device) * stride
    keep = []
    for b in range(B):
        x0, y0, w, h = (int(x) for x in crops[b])
        cam = cams[b]
        kx = (jj < w) & (jj + x0 >= 0) & (jj + x0 < int(cam.width))
        ky = (ii < h) & (ii + y0 >= 0) & (ii + y0 < int(cam.height))
        keep.append(ky[:, None] & kx[None, :])
    return torch.where(torch.stack(keep), ids, torch.full_like(ids, -1))


def crop_rays(cameras: Sequence[FitCamera], crops, height: int, width: int, device="cpu") -> torch.Tensor:
    """Normalized undistorted (x, y) of every crop pixel's ray (ray = (x, y, 1)).

    Args:
        cameras: B `FitCamera`s.  crops: (B, 4) x0, y0, w, h.  height, width: the output size.
    Returns:
        float32 (B, height, width, 2) on `device`; pixels outside the camera's image hold 0.
        From each camera's cached `FitCamera.ray_map` (undistortion grid, bilinear).
    """
    c = _as_crops(crops, len(np.asarray(crops).reshape(-1, 4)))
    cams = _as_cameras(cameras, len(c))
    out = torch.zeros((len(c), int(height), int(width), 2), dtype=torch.float32, device=device)
    for b, cam in enumerate(cams):
        x0, y0 = int(c[b, 0]), int(c[b, 1])
        lx, ly = max(0, -x0), max(0, -y0)
        hx, hy = min(int(width), int(cam.width) - x0), min(int(height), int(cam.height) - y0)
        if hx > lx and hy > ly:
            out[b, ly:hy, lx:hx] = cam.ray_map(device)[y0 + ly:y0 + hy, x0 + lx:x0 + hx]
    return out


# -- backends ------------------------------------------------------------------------------------


class Rasterizer:
    """One topology, many views: `rasterize(vertices, cameras, crops)` -> `RasterOutput`.

    Args:
        triangles: (F, 3) int vertex indices.  n_vertices: N.
        near, far: clip range along z, metres.
    """

    backend = ""

    def __init__(self, triangles, n_vertices: int, near: float = 0.05, far: float = 20.0):
        tri = triangles.detach().cpu().numpy() if isinstance(triangles, torch.Tensor) else np.asarray(triangles)
        if tri.ndim != 2 or tri.shape[1] != 3 or len(tri) == 0 or not np.issubdtype(tri.dtype, np.integer):
            raise ValueError(f"triangles must be a non-empty integer (F, 3) array, got {tri.dtype} {tri.shape}")
        if tri.min() < 0 or tri.max() >= int(n_vertices):
            raise ValueError(f"triangles index vertices outside [0, {int(n_vertices)})")
        self.triangles = tri.astype(np.int64)
        self.n_vertices = int(n_vertices)
        self.near, self.far = float(near), float(far)

    def rasterize(self, vertices, cameras, crops, size: tuple[int, int] | None = None, stride: int = 1) -> RasterOutput:
        """Rasterize B views.

        Args:
            vertices: (B, N, 3) camera-frame positions, metres (torch or numpy; never differentiated).
            cameras: a `FitCamera` (or anything `FitCamera.of` takes) per view, or one for all.
            crops: (B, 4) or (4,) int x0, y0, w, h crop boxes in the raw image, pixels.
            size: (H, W) of the output; default: the largest crop in output pixels (smaller crops
                are padded with background).
            stride: raw pixels between output pixels: output pixel (i, j) is raw pixel
                (x0 + j·stride, y0 + i·stride), the same camera through a smaller viewport (the
                samples a full-resolution raster would give at [::stride, ::stride]).
        Returns:
            `RasterOutput` on the vertices' device (the GL backend computes on the host).
        """
        v = _check_vertices(vertices)
        if v.shape[1] != self.n_vertices:
            raise ValueError(f"vertices must be (B, {self.n_vertices}, 3), got {tuple(v.shape)}")
        B = v.shape[0]
        cams = _as_cameras(cameras, B)
        c = _as_crops(crops, B)
        s = max(int(stride), 1)
        H, W = ((-(-int(c[:, 3].max()) // s), -(-int(c[:, 2].max()) // s)) if size is None
                else (int(size[0]), int(size[1])))
        ids, bary = self._rasterize(v.detach(), cams, c, H, W, s)
        return RasterOutput(ids, bary, torch.as_tensor(c, device=ids.device), self.backend, s)

    def _rasterize(self, v, cams, crops, H, W, stride):  # pragma: no cover - abstract
        raise NotImplementedError


class GLRasterizer(Rasterizer):
    """The CPU backend: OpenGL (moderngl/EGL, llvmpipe where there is no GPU driver)."""

    backend = "gl"

    def __init__(self, triangles, n_vertices: int, near: float = 0.05, far: float = 20.0):
        super().__init__(triangles, n_vertices, near, far)
        from mmface4d_stream.render.raster_ids import GLTriangleRasterizer

        self._gl = GLTriangleRasterizer(self.triangles, self.n_vertices, self.near, self.far)

    def _rasterize(self, v, cams, crops, H, W, stride):
        ids, bary = self._gl.rasterize(v.cpu().numpy(), cams, crops, H, W, stride)
        return torch.from_numpy(ids).to(v.device), torch.from_numpy(bary).to(v.device)

    def release(self) -> None:
        self._gl.release()


_NVDIFFRAST = None


def load_nvdiffrast():
    """Import `nvdiffrast.torch` and make sure its CUDA plugin is built and loaded.

    nvdiffrast JIT-builds its plugin with `torch.utils.cpp_extension.load` and then re-imports it by
    name, which fails on current torch (`ModuleNotFoundError: nvdiffrast_plugin...`: the built
    module is not importable by name). Here the build call is observed and the module object it
    returns is placed in nvdiffrast's plugin cache, so later calls find it there.
    Raises ImportError when nvdiffrast is not installed (`pip install .[gpu]`).
    """
    global _NVDIFFRAST
    if _NVDIFFRAST is not None:
        return _NVDIFFRAST
    import nvdiffrast.torch as dr
    import torch.utils.cpp_extension as cpp_extension

    ops = getattr(dr, "ops", None)
    if ops is None:
        import nvdiffrast.torch.ops as ops
    built = []
    original_load = cpp_extension.load

    def observed_load(*args, **kwargs):
        module = original_load(*args, **kwargs)
        built.append(module)
        return module

    cpp_extension.load = observed_load
    try:
        try:
            ops._get_plugin()
        except ModuleNotFoundError:
            if not built:
                raise
            cache = getattr(ops, "_cached_plugin", None)
            if isinstance(cache, dict):
                cache[False] = built[-1]
            else:
                ops._cached_plugin = built[-1]
            logger.debug("nvdiffrast plugin loaded from the module object cpp_extension.load returned")
    finally:
        cpp_extension.load = original_load
    _NVDIFFRAST = dr
    return dr


def nvdiffrast_available() -> bool:
    """Whether nvdiffrast is installed and CUDA is available (does not build the plugin)."""
    if not torch.cuda.is_available():
        return False
    import importlib.util

    return importlib.util.find_spec("nvdiffrast") is not None


class NvdiffrastRasterizer(Rasterizer):
    """The CUDA backend: nvdiffrast's CUDA rasterizer (`RasterizeCudaContext`).

    Vertices are distorted and mapped to each view's crop in torch (`clip_coordinates`); one
    instanced-mode `rasterize` call covers all views. nvdiffrast's output (u, v, z/w, id + 1) holds
    the same barycentric convention as the GL backend (u weighs vertex 0, v vertex 1).
    """

    backend = "nvdiffrast"

    def __init__(self, triangles, n_vertices: int, near: float = 0.05, far: float = 20.0, device="cuda"):
        super().__init__(triangles, n_vertices, near, far)
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"the nvdiffrast backend needs a CUDA device, got {self.device}")
        self._dr = load_nvdiffrast()
        self._ctx = self._dr.RasterizeCudaContext(device=self.device)
        self._tri = torch.as_tensor(self.triangles, dtype=torch.int32, device=self.device).contiguous()

    def _rasterize(self, v, cams, crops, H, W, stride):
        pos = clip_coordinates(v.to(self.device), cams, crops, H, W, self.near, self.far, stride).contiguous()
        rast, _ = self._dr.rasterize(self._ctx, pos, self._tri, resolution=(H, W), grad_db=False)
        ids = rast[..., 3].round().to(torch.int32) - 1
        ids = _background_outside(ids, cams, crops, stride)
        bary = torch.where((ids >= 0)[..., None], rast[..., :2], torch.zeros_like(rast[..., :2])).contiguous()
        return ids.to(v.device), bary.to(v.device)


def make_rasterizer(triangles, n_vertices: int, backend: str = "auto", device="cpu",
                    near: float = 0.05, far: float = 20.0) -> Rasterizer:
    """A rasterizer for one topology.

    backend: "gl", "nvdiffrast", or "auto" (nvdiffrast on a CUDA device where it is installed,
    otherwise GL).
    """
    if backend not in RASTER_BACKENDS:
        raise ValueError(f"backend must be one of {RASTER_BACKENDS}, got {backend!r}")
    device = torch.device(device)
    if backend == "auto":
        backend = "nvdiffrast" if device.type == "cuda" and nvdiffrast_available() else "gl"
    if backend == "gl":
        return GLRasterizer(triangles, n_vertices, near, far)
    return NvdiffrastRasterizer(triangles, n_vertices, near, far, device=device)


def rasterize(vertices, triangles, cameras, crops, backend: str = "auto",
              size: tuple[int, int] | None = None, stride: int = 1) -> RasterOutput:
    """One-off `make_rasterizer(...).rasterize(...)` (build a `Rasterizer` to reuse across frames)."""
    v = _check_vertices(vertices)
    r = make_rasterizer(triangles, v.shape[1], backend, v.device)
    try:
        return r.rasterize(v, cameras, crops, size, stride)
    finally:
        if isinstance(r, GLRasterizer):
            r.release()


# -- differentiable interpolation -----------------------------------------------------------------


def _corner_indices(tri_ids: torch.Tensor, triangles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    tri = torch.as_tensor(triangles, device=tri_ids.device).long()
    mask = tri_ids >= 0
    return tri[tri_ids.clamp_min(0).long()], mask  # (B, ..., 3)


def gather_corners(attributes: torch.Tensor, corners: torch.Tensor) -> torch.Tensor:
    """attributes (B, N, D), corners (B, ..., 3) -> (B, ..., 3, D)."""
    B, N, D = attributes.shape
    flat = corners.reshape(B, -1)
    got = torch.gather(attributes, 1, flat[..., None].expand(B, flat.shape[1], D))
    return got.reshape(*corners.shape, D)


def interpolate(attributes: torch.Tensor, tri_ids: torch.Tensor, barycentrics: torch.Tensor,
                triangles) -> Interpolated:
    """Per-vertex attributes at pixels, differentiable (rasterization held fixed).

    value = b0·a[t0] + b1·a[t1] + (1 - b0 - b1)·a[t2] for the pixel's triangle (t0, t1, t2).

    Args:
        attributes: (B, N, D) or (N, D) (shared by all views), any float dtype.
        tri_ids: int (B, ...) triangle per pixel, -1 = background (`RasterOutput.tri_ids`).
        barycentrics: (B, ..., 2) (`RasterOutput.barycentrics`), cast to the attributes' dtype.
        triangles: (F, 3) int vertex indices.
    Returns:
        `Interpolated`: values (B, ..., D) in the attributes' dtype, zero on background (gradient
        zero there too); mask bool (B, ...). Gradients reach attributes and barycentrics.
    """
    a = attributes
    B = tri_ids.shape[0]
    if a.ndim == 2:
        a = a[None].expand(B, *a.shape)
    if a.ndim != 3 or a.shape[0] != B:
        raise ValueError(f"attributes must be (B, N, D) or (N, D) with B = {B}, got {tuple(attributes.shape)}")
    if barycentrics.shape != (*tri_ids.shape, 2):
        raise ValueError(f"barycentrics must be {(*tri_ids.shape, 2)}, got {tuple(barycentrics.shape)}")
    corners, mask = _corner_indices(tri_ids, triangles)
    vals = gather_corners(a, corners)  # (B, ..., 3, D)
    b = barycentrics.to(a.dtype)
    w = torch.cat([b, 1 - b.sum(-1, keepdim=True)], dim=-1)  # (B, ..., 3)
    out = (vals * w[..., None]).sum(-2)
    out = torch.where(mask[..., None], out, torch.zeros_like(out))
    return Interpolated(out, mask)


def model_depth(vertices: torch.Tensor, raster: RasterOutput, triangles) -> Interpolated:
    """The model's camera-space z at each pixel, interpolated with the raster's barycentrics.

    Args:
        vertices: (B, N, 3) camera-frame positions, metres (differentiable).
        raster: `RasterOutput` of these (or nearby) vertices.  triangles: (F, 3).
    Returns:
        `Interpolated` with values (B, H, W) metres (0 on background) and mask (B, H, W).
    """
    got = interpolate(vertices[..., 2:3], raster.tri_ids, raster.barycentrics, triangles)
    return Interpolated(got.values[..., 0], got.mask)


def ray_plane_depth(vertices: torch.Tensor, raster: RasterOutput, triangles, rays: torch.Tensor,
                    min_cosine: float = 1e-3) -> Interpolated:
    """z where each pixel's exact (undistorted) ray meets the plane of its triangle.

    Unlike `model_depth`, this does not inherit the linearization of the lens across a triangle
    (the barycentrics come from straight edges in the distorted image): it is the depth a depth
    camera would report for the triangle's plane, exact for any distortion.

    Args:
        vertices: (B, N, 3) camera-frame positions, metres (differentiable).
        raster: `RasterOutput`.  triangles: (F, 3).
        rays: (B, H, W, 2) normalized undistorted (x, y) per pixel (`crop_rays`).
        min_cosine: pixels whose ray is closer than this (cosine) to the triangle's plane are masked.
    Returns:
        `Interpolated` with values (B, H, W) metres (0 where masked) and mask (B, H, W).
    """
    corners, mask = _corner_indices(raster.tri_ids, triangles)
    p = gather_corners(vertices, corners)  # (B, H, W, 3, 3)
    p0, p1, p2 = p[..., 0, :], p[..., 1, :], p[..., 2, :]
    n = torch.linalg.cross(p1 - p0, p2 - p0)
    r = torch.cat([rays.to(vertices.dtype), torch.ones_like(rays[..., :1], dtype=vertices.dtype)], dim=-1)
    denom = (n * r).sum(-1)
    ok = mask & (denom.abs() > min_cosine * n.norm(dim=-1) * r.norm(dim=-1))
    safe = torch.where(ok, denom, torch.ones_like(denom))
    z = (n * p0).sum(-1) / safe
    return Interpolated(torch.where(ok, z, torch.zeros_like(z)), ok)
