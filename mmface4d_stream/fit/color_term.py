"""The photometric term of `fitter.raster: depth+color`: the colour crop against shaded per-vertex albedo.

It uses the rasterized depth term's samples (`raster_term.RasterBatch`: fixed surface points of
the model, a triangle and its barycentrics w, chosen on a rendering of the frame's starting mesh).
For a sample X(θ) = Σ_k w_k X_k(θ) seen by camera c:

    r = I_c(π_c(R_c (R X + t) + t_c)) − ρ_c          per colour channel, in [0, 1] units
    ρ_c = a(X) ⊙ (l_c · (1, n, n·v))                  shaded albedo

I_c is the colour crop (at the depth samples' grid: tent-filtered at the stride, then [1 2 1]
blurred, `color_images`), sampled bilinearly at the model point's projection through the full lens
model π_c; a(X) = Σ_k w_k a_k interpolates per-vertex albedo a (RGB), n is the starting mesh's
interpolated normal and v the unit direction to the camera (camera frame), and l_c (5 per channel:
ambient, first-order spherical harmonics, a light at the camera; `shading_basis`) is fitted in
closed form per camera (`fit_shading`) at each association of the solve, to the colour at the
samples' current projections (fixed in between). Grazing samples (n·v < MIN_VIEW_COS:
silhouettes, where the colour mixes what lies behind) are left out. With the pixel correspondence
moving with θ, the Jacobian runs through the projection: ∂r/∂θ = ∇I · ∂π/∂x_c · ∂x_c/∂θ, with ∇I
the exact derivative of the bilinear interpolant and ∂π/∂x_c the lens model's (its lens part by
central differences in the normalized image plane, held at the first association's state). Rasterization, albedo and the shading basis are
held fixed in the solve, as nvdiffrast's interpolation is; the rows are Huber-weighted and join the LM
normal equations (`lm_solver._Terms`) and the offset step (`color_offset_rows`). Fixed shapes, no
host reads inside the solve.

Albedo (`AlbedoState`, one per stream and camera: each view blurs and foreshortens the surface
differently, and one albedo averaged over the views biased the pose at high-contrast edges such as
the lips): after a frame is solved, its result is the next frame's starting mesh; the next
frame's preparation projects those vertices into the previous frame's colour crops
(`observe_vertices`: visible where the depth crop agrees within 5 mm and the normal faces the
camera) and divides by that frame's shading relative to the albedo so far. During the first
`albedo_frames` such observations the albedo is their per-vertex median; afterwards it follows an
exponential update whose step is clamped to `albedo_step_max` (robust to occlusions, specular
spots and misfits). The first frame of a stream (and every cold start) has no albedo to compare
with: the term is inactive there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mmface4d_stream.fit.depth_term import CameraBatch
from mmface4d_stream.fit.landmark_term import huber_cost, huber_weight, normal_equations
from mmface4d_stream.fit.model_pack import ModelPack, cross3, vertex_normals
from mmface4d_stream.fit.raster import gather_corners
from mmface4d_stream.fit.raster_term import RasterBatch, RasterTerm, interp_batched, scatter_corner_blocks

__all__ = ["ColorBatch", "AlbedoState", "ColorTerm", "color_images", "color_windows", "collate_colors", "sample_bilinear",
           "lens_jacobian", "projection_jacobian", "shading_basis", "fit_shading", "observe_vertices", "prepare_color", "color_offset_rows"]

# A vertex is seen by a camera when the depth crop at its projection is within this of its depth.
VISIBLE_DEPTH_M = 0.005
# ... and its normal faces the camera at least this much (cosine).
VISIBLE_COS = 0.3
# Samples whose normal is closer than this (cosine) to perpendicular to the view are left out.
MIN_VIEW_COS = 0.5
# Robust threshold of the closed-form shading fit (colour units).
SHADING_HUBER = 0.05
# Most vertices the per-frame albedo update fits the shading on (the template's 6,996 all count).
SHADING_FIT_VERTICES = 8192


@dataclass
class ColorBatch:
    """The colour term's inputs of one solve: B streams x C cameras, M samples (the raster's).

    Attributes:
        images: (B, C, 3, H, W) float32 RGB in [0, 1] on the depth samples' grid (`color_images`),
            zero in padding and in cameras without colour.
        origin: (B, C, 2) float32 raw pixel (x0, y0) of images[..., 0, 0].
        size: (B, C, 2) float32 valid width, height of each image in samples.
        albedo: (B, C, M, 3) float32 interpolated albedo a(X) at the samples.
        basis: (B, C, M, K) float32 shading basis of the starting mesh at the samples
            (`shading_basis`, camera frame).
        valid: (B, C, M) float32 1 where the sample has an albedo and the camera a colour crop.
        stride: raw pixels between samples.
    """

    images: torch.Tensor
    origin: torch.Tensor
    size: torch.Tensor
    albedo: torch.Tensor
    basis: torch.Tensor
    valid: torch.Tensor
    stride: int = 1


@dataclass
class _Previous:
    """A stream's last prepared frame, kept for the albedo update of its next frame."""

    cameras: CameraBatch  # B = 1
    images: torch.Tensor  # (C, 3, H, W)
    depth_m: torch.Tensor  # (C, H, W)
    origin: torch.Tensor  # (C, 2)
    size: torch.Tensor  # (C, 2)
    has: torch.Tensor  # (C,) bool, the camera had a colour crop
    stride: int


@dataclass
class AlbedoState:
    """One stream's per-vertex albedo (see the module docstring).

    albedo: (C, N, 3) float32 RGB in [0, 1] per camera (the appearance each camera learned: the
        same surface is blurred and foreshortened differently in each view), NaN where that camera
        never saw the vertex (None before the first update).
    history: the first observations (C, N, 3) (median phase).  updates: observations taken.
    previous: the stream's last prepared frame (colour, depth, cameras) for the next update.
    """

    albedo: torch.Tensor | None = None
    history: list = field(default_factory=list)
    updates: int = 0
    previous: _Previous | None = None

    def copy(self, device=None, with_previous: bool = True) -> AlbedoState:
        """A copy that later updates of this state leave alone, its tensors on `device` (None: where
        they are); without the previous frame unless `with_previous` (a checkpoint's copy: the first
        frame after a restore observes nothing, the next ones go on)."""
        move = (lambda x: x) if device is None else (lambda x: x.to(device))
        return AlbedoState(None if self.albedo is None else move(self.albedo), [move(h) for h in self.history],
                           self.updates, self.previous if with_previous else None)

    def add(self, observed: torch.Tensor, frames: int, rate: float, step_max: float) -> None:
        """Take one observation (C, N, 3) (NaN: vertex not seen by that camera)."""
        if self.albedo is not None and self.albedo.shape != observed.shape:
            self.albedo = _cameras_like(self.albedo, observed.shape[0])
            self.history = [_cameras_like(h, observed.shape[0]) for h in self.history]
        if self.updates < frames:
            self.history.append(observed)
            self.albedo = torch.nanmedian(torch.stack(self.history), 0).values
        else:
            self.history = []
            seen = torch.isfinite(observed)
            known = torch.isfinite(self.albedo)
            step = (observed - self.albedo).clamp(-step_max, step_max)
            moved = torch.where(seen & known, self.albedo + rate * step, self.albedo)
            self.albedo = torch.where(seen & ~known, observed, moved)
        self.updates += 1


# -- images ---------------------------------------------------------------------------------------


def _separable(x: torch.Tensor, taps: Sequence[float], stride: int = 1) -> torch.Tensor:
    """Filter (..., H, W) with the same symmetric 1-D kernel along both axes (zero beyond the
    border), keeping every `stride`-th output sample from 0: output (i, j) is centred on input
    (i·stride, j·stride). Shifted slices and adds (cheaper on a CPU than a grouped conv2d)."""
    r = len(taps) // 2
    for dim in (-2, -1):
        n = x.shape[dim]
        pad = [0, 0] * 2
        pad[(0 if dim == -1 else 2):(2 if dim == -1 else 4)] = [r, r]
        xp = F.pad(x, pad)
        m = -(-n // stride)
        out = 0
        for d, k in enumerate(taps):
            out = out + k * xp.narrow(dim, d, (m - 1) * stride + 1)[(..., slice(None, None, stride)) if dim == -1
                                                                      else (..., slice(None, None, stride), slice(None))]
        x = out
    return x


def _tent_taps(stride: int) -> list[float]:
    """Tent of half-width `stride` (2·stride - 1 taps), sum 1: anti-aliasing for a stride."""
    w = [float(stride - abs(d)) for d in range(-(stride - 1), stride)]
    return [v / sum(w) for v in w]


def color_images(window_rgb: torch.Tensor, stride: int) -> torch.Tensor:
    """A colour window at the depth samples' grid.

    Args:
        window_rgb: (3, h·s, w·s) float (0..1) raw pixels whose top-left is the grid's first sample
            (fewer rows/columns at the image's border are fine).
        stride: s.
    Returns:
        (3, h, w) float32: sample (i, j) is the tent-filtered colour around raw pixel (i·s, j·s)
        (anti-aliasing at the stride).
    """
    s = max(int(stride), 1)
    x = window_rgb.to(torch.float32)
    return _separable(x, _tent_taps(s), s) if s > 1 else x


def _blur(images: torch.Tensor) -> torch.Tensor:
    """[1 2 1]/4 separable blur of (..., H, W) images (zero beyond their border)."""
    return _separable(images, (0.25, 0.5, 0.25))


def collate_colors(windows: Sequence[Sequence[np.ndarray | None]], n_cameras: int, height: int, width: int,
                   stride: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """B frames' colour windows on the depth grid, padded to (height, width) samples.

    Args:
        windows: per frame and camera a uint8 (h·s, w·s, 3) raw RGB window starting at the depth
            crop's top-left pixel, or None.
    Returns:
        images (B, C, 3, H, W) float32 blurred colour in [0, 1], has (B, C) bool, on `device`.
    """
    b = len(windows)
    images = torch.zeros((b, n_cameras, 3, height, width), dtype=torch.float32, device=device)
    has = torch.zeros((b, n_cameras), dtype=torch.bool)
    for i, row in enumerate(windows):
        for k, win in enumerate(row):
            if win is None or win.size == 0:
                continue
            t = torch.from_numpy(np.ascontiguousarray(win)).to(device).permute(2, 0, 1).to(torch.float32) / 255.0
            img = color_images(t, stride)
            h, w = min(img.shape[1], height), min(img.shape[2], width)
            images[i, k, :, :h, :w] = img[:, :h, :w]
            has[i, k] = True
    return _blur(images), has.to(device)


def color_windows(obs, cams, crops, stride: int) -> list[np.ndarray | None]:
    """Per camera of a frame the raw colour window under its depth crop (`collate_colors`' input):
    the observation's `color_rgb` (the window at `offset_px`, as `depth_mm`) from the crop's top-left
    pixel, (h·s, w·s) raw pixels; None without colour or crop.

    obs: `FrameObservation`; cams: its `frame_prep.PreparedCamera`s; crops: their `DepthCrop`s.
    """
    out = []
    for cam, crop in zip(cams, crops):
        rgb = obs.cameras[cam.index].color_rgb
        if crop is None or rgb is None:
            out.append(None)
            continue
        ox, oy = cam.depth_offset
        h, w = crop.shape
        y0, x0 = crop.y0 - oy, crop.x0 - ox
        out.append(rgb[y0:y0 + h * stride, x0:x0 + w * stride])
    return out


# -- sampling and projection ------------------------------------------------------------------------


def sample_bilinear(images: torch.Tensor, q: torch.Tensor, size: torch.Tensor):
    """Bilinear samples of (B, C, D, H, W) images at grid coordinates q (B, C, M, 2) (x = column,
    y = row), with the interpolant's exact derivatives.

    Returns:
        values (B, C, M, D), d/dx (B, C, M, D), d/dy (B, C, M, D), inside (B, C, M) bool (q within
        [0, size - 1], size (B, C, 2) = valid width, height).
    """
    b, c, d, h, w = images.shape
    m = q.shape[2]
    x, y = q[..., 0], q[..., 1]
    lim = size[:, :, None] - 1
    inside = (x >= 0) & (y >= 0) & (x <= lim[..., 0]) & (y <= lim[..., 1])
    x = x.clamp(0, w - 1.001)
    y = y.clamp(0, h - 1.001)
    x0, y0 = x.floor(), y.floor()
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    idx = y0.long() * w + x0.long()
    flat = images.reshape(b, c, d, h * w)

    def at(i):
        return torch.gather(flat, 3, i[:, :, None, :].expand(b, c, d, m)).transpose(-1, -2)

    v00, v01, v10, v11 = at(idx), at(idx + 1), at(idx + w), at(idx + w + 1)
    top, bottom = v00 + fx * (v01 - v00), v10 + fx * (v11 - v10)
    values = top + fy * (bottom - top)
    dx = (1 - fy) * (v01 - v00) + fy * (v11 - v10)
    dy = bottom - top
    return values, dx, dy, inside


def lens_jacobian(cameras: CameraBatch, xc: torch.Tensor, h: float = 1e-4) -> torch.Tensor:
    """d raw pixel / d (x/z, y/z) of the lens model at camera-frame points xc (B, C, M, 3):
    (B, C, M, 2, 2), by central differences (step h) in the normalized image plane."""
    iz = 1.0 / xc[..., 2].clamp_min(1e-6)
    x, y = xc[..., 0] * iz, xc[..., 1] * iz
    one = torch.ones_like(x)

    def pix(a, b_):
        return torch.stack(cameras.project(torch.stack([a, b_, one], -1)), -1)

    return torch.stack([(pix(x + h, y) - pix(x - h, y)) / (2 * h), (pix(x, y + h) - pix(x, y - h)) / (2 * h)], -1)


def projection_jacobian(cameras: CameraBatch, xc: torch.Tensor, lens: torch.Tensor | None = None):
    """Raw pixels of camera-frame points xc (B, C, M, 3) and d pixel / d xc (B, C, M, 2, 3).

    lens: the lens part (`lens_jacobian`, (B, C, M, 2, 2)) when the caller holds it fixed (it
    changes by far less than a percent over a frame's sub-millimetre steps); None: taken here.
    """
    u, v = cameras.project(xc)
    if lens is None:
        lens = lens_jacobian(cameras, xc)
    iz = 1.0 / xc[..., 2].clamp_min(1e-6)
    x, y = xc[..., 0] * iz, xc[..., 1] * iz
    zero = torch.zeros_like(iz)
    persp = torch.stack([torch.stack([iz, zero, -x * iz], -1), torch.stack([zero, iz, -y * iz], -1)], -2)
    return torch.stack([u, v], -1), lens @ persp


# -- shading and albedo ----------------------------------------------------------------------------


def shading_basis(normals: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """The shading model's basis at surface points: (..., 5) = (1, n, n·v) for unit normals n and
    points (..., 3) in a camera's frame, v the unit direction to the camera.

    Shading = l · basis: ambient, first-order spherical harmonics (a distant light: l1..3 its
    direction times its strength) and a light at the camera (l4; Lambert towards the camera, as a
    ring light or the renderer's headlight gives).
    """
    view = -points / torch.linalg.norm(points, dim=-1, keepdim=True).clamp_min(1e-9)
    return torch.cat([torch.ones_like(normals[..., :1]), normals, (normals * view).sum(-1, keepdim=True)], -1)


def fit_shading(observed: torch.Tensor, albedo: torch.Tensor, basis: torch.Tensor, ok: torch.Tensor,
                ridge: float = 1.0, iterations: int = 2) -> torch.Tensor:
    """Per camera and channel l (K,) with observed ≈ albedo · (l · basis), robust least squares.

    Args:
        observed, albedo: (..., M, 3) colour at samples (leading dims: cameras, or streams and
            cameras).  basis: (..., M, K) `shading_basis`.  ok: (..., M) float 0/1.
        ridge: pull towards (1, 0, ...) (ambient 1: what a camera without samples gets).
    Returns:
        (..., 3, K) float32. No host reads (`linalg.solve_ex`).
    """
    k = basis.shape[-1]
    a = albedo.transpose(-1, -2)[..., None] * basis[..., None, :, :]  # (..., 3, M, K)
    y = observed.transpose(-1, -2)  # (..., 3, M)
    prior = torch.zeros(k, dtype=a.dtype, device=a.device)
    prior[0] = 1.0
    eye = torch.eye(k, dtype=a.dtype, device=a.device)
    w = ok[..., None, :].expand_as(y)
    sh = prior.expand(*y.shape[:-1], k)
    for _ in range(iterations):
        aw = a * w[..., None]
        lhs = aw.transpose(-1, -2) @ a + ridge * eye
        rhs = (aw * y[..., None]).sum(-2) + ridge * prior
        sh = torch.linalg.solve_ex(lhs, rhs[..., None])[0][..., 0]
        res = (a @ sh[..., None])[..., 0] - y
        w = ok[..., None, :] * huber_weight(res.abs(), SHADING_HUBER)
    return sh


def _shade(sh: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """(..., 3, K) shading at (..., M, K) basis -> (..., M, 3)."""
    return torch.einsum("...ki,...mi->...mk", sh, basis)


def observe_vertices(prev: _Previous, vertices: torch.Tensor, normals: torch.Tensor,
                     albedo: torch.Tensor | None) -> torch.Tensor:
    """Per-camera albedo seen at vertices (N, 3) with unit normals (N, 3) (reference frame) in a
    previous frame's colour crops: (C, N, 3), colour / shading; NaN where the camera does not see
    the vertex (depth disagrees by more than VISIBLE_DEPTH_M, or the normal faces away).

    Each camera's shading is fitted on the same vertices (`fit_shading`; at most
    `SHADING_FIT_VERTICES` of them, every k-th: five weights per channel need no more, and a
    BFM-size mesh made it ~50 ms per frame) against the current per-camera `albedo` (C, N, 3) (a
    change of lighting since the albedo was learned); the first observation (albedo None) defines
    the albedo with a shading of 1.
    """
    cams = prev.cameras
    xc = cams.to_cameras(vertices[None])  # (1, C, N, 3)
    nc = cams.rotate(normals[None])
    u, v = cams.project(xc)
    q = (torch.stack([u, v], -1) - prev.origin[None, :, None]) / prev.stride
    color, _, _, inside = sample_bilinear(prev.images[None], q, prev.size[None])
    h, w = prev.depth_m.shape[1:]
    col = q[..., 0].round().clamp(0, w - 1).long()
    row = q[..., 1].round().clamp(0, h - 1).long()
    z_obs = torch.gather(prev.depth_m.reshape(1, -1, h * w), 2, row * w + col)
    dist = torch.linalg.norm(xc, dim=-1).clamp_min(1e-9)
    facing = -(nc * xc).sum(-1) / dist
    seen = (inside & (z_obs > 0) & ((z_obs - xc[..., 2]).abs() < VISIBLE_DEPTH_M) & (facing > VISIBLE_COS)
            & prev.has[None, :, None])[0]  # (C, N)
    color = color[0]
    if albedo is not None:
        albedo = _cameras_like(albedo, color.shape[0])
        known = torch.isfinite(albedo).all(-1) & seen
        basis = shading_basis(nc[0], xc[0])
        every = -(-basis.shape[1] // SHADING_FIT_VERTICES)
        sh = fit_shading(color[:, ::every], torch.nan_to_num(albedo[:, ::every]), basis[:, ::every],
                         known[:, ::every].to(color.dtype))
        color = color / _shade(sh, basis).clamp_min(0.05)
    return torch.where(seen[..., None], color, torch.full_like(color, float("nan")))


def _cameras_like(albedo: torch.Tensor, n_cameras: int) -> torch.Tensor:
    """Per-camera albedo (C', N, 3) cut or NaN-padded to n_cameras."""
    if albedo.shape[0] >= n_cameras:
        return albedo[:n_cameras]
    pad = torch.full((n_cameras - albedo.shape[0], *albedo.shape[1:]), float("nan"), dtype=albedo.dtype,
                     device=albedo.device)
    return torch.cat([albedo, pad])


def prepare_color(pack: ModelPack, config, rb: RasterBatch, windows, cameras: CameraBatch, depth_mm: torch.Tensor,
                  origin: torch.Tensor, size: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor,
                  full: torch.Tensor, warm: Sequence[bool], states: Sequence[AlbedoState], stride: int) -> ColorBatch:
    """The colour term's batch for one solve, updating each stream's albedo on the way.

    Args:
        pack: the model.  config: `FitterConfig` (albedo_frames, albedo_rate, albedo_step_max).
        rb: the frame's raster samples.  windows: per stream and camera the colour window (see
            `collate_colors`) or None.  cameras, depth_mm (B, C, H, W) uint16, origin (B, C, 2),
            size (B, C, 2): the solve's cameras and depth crops (`frame_prep.collate_*`).
        rotation (B, 3, 3), translation (B, 3), full (B, N, 3): the frame's starting state.
        warm: per stream, the start is the stream's previous result.  states: per stream its
            `AlbedoState` (a stream repeated to pad a batch is updated once).
    Returns:
        `ColorBatch` on the solve's device.
    """
    cfg = config
    b, n_cam, h, w = depth_mm.shape
    images, has = collate_colors(windows, n_cam, h, w, stride, depth_mm.device)
    start = full @ rotation.transpose(-1, -2) + translation[:, None]
    normals = vertex_normals(start, pack.triangles)
    depth_m = depth_mm.to(torch.float32) * 1e-3
    size_f = size.to(torch.float32)
    m = rb.valid.shape[2]
    alb_s = torch.zeros((b, n_cam, m, 3), dtype=torch.float32, device=depth_mm.device)
    nrm_s = torch.zeros((b, n_cam, m, 5), dtype=torch.float32, device=depth_mm.device)
    valid = torch.zeros((b, n_cam, m), dtype=torch.float32, device=depth_mm.device)
    # Every sample's shading basis, each camera's samples in that camera's frame (all streams at once).
    nrm = torch.einsum("bcij,bcmj->bcmi", cameras.r, interp_batched(normals, rb.corners, rb.weights))
    nrm = nrm / torch.linalg.norm(nrm, dim=-1, keepdim=True).clamp_min(1e-9)
    pts = torch.einsum("bcij,bcmj->bcmi", cameras.r, interp_batched(start, rb.corners, rb.weights)) + cameras.t[:, :, None]
    bases = shading_basis(nrm, pts)  # (B, C, M, 5)
    done: dict[int, int] = {}
    for i, st in enumerate(states):
        if id(st) in done:  # a repeated stream (padding): the same inputs
            j = done[id(st)]
            alb_s[i], nrm_s[i], valid[i] = alb_s[j], nrm_s[j], valid[j]
            continue
        done[id(st)] = i
        if warm[i] and st.previous is not None:
            st.add(observe_vertices(st.previous, start[i], normals[i], st.albedo), cfg.albedo_frames,
                   cfg.albedo_rate, cfg.albedo_step_max)
        cams_i = CameraBatch(*(getattr(cameras, k)[i:i + 1] for k in ("r", "t", "focal", "centre", "dist", "r2_limit")))
        if warm[i] and st.albedo is not None:
            c, wts = rb.corners[i], rb.weights[i]  # (C, M, 3)
            per_cam = _cameras_like(st.albedo, n_cam)
            alb = (per_cam[torch.arange(n_cam, device=c.device)[:, None, None], c] * wts[..., None]).sum(-2)  # (C, M, 3)
            basis = bases[i]
            # Grazing samples (silhouettes: the colour there mixes what lies behind) are left out.
            valid[i] = rb.valid[i] * torch.isfinite(alb).all(-1) * has[i][:, None] * (basis[..., 4] > MIN_VIEW_COS)
            alb_s[i], nrm_s[i] = torch.nan_to_num(alb), basis
        st.previous = _Previous(cams_i, images[i], depth_m[i], origin[i], size_f[i], has[i], int(stride))
    return ColorBatch(images, origin.to(torch.float32), size_f, alb_s, nrm_s, valid, int(stride))


# -- the term in the solve -----------------------------------------------------------------------


def _photometric(cb: ColorBatch, cameras: CameraBatch, rp: torch.Tensor, translation: torch.Tensor,
                 lens: torch.Tensor | None = None):
    """Observed colour (B, C, M, 3), inside (B, C, M) and d colour / d reference-frame point
    (B, C, M, 3, 3) (channel, xyz) at model points rotated into the reference frame rp (B, C, M, 3);
    lens: `projection_jacobian`'s."""
    xc = torch.einsum("bcij,bcmj->bcmi", cameras.r, rp + translation[:, None, None]) + cameras.t[:, :, None]
    uv, ju = projection_jacobian(cameras, xc, lens)
    q = (uv - cb.origin[:, :, None]) / cb.stride
    val, dx, dy, inside = sample_bilinear(cb.images, q, cb.size)
    grad = torch.stack([dx, dy], -1) / cb.stride  # (B, C, M, 3, 2) per raw pixel
    g_ref = torch.einsum("bcmkp,bcmpi,bcij->bcmkj", grad, ju, cameras.r)
    return val, inside, g_ref


def _shaded_target(cb: ColorBatch, observed: torch.Tensor, inside: torch.Tensor, gate: float,
                   previous: torch.Tensor | None = None):
    """The shading fitted to colour observed at the samples' current projections (B, C, M, 3):
    (target ρ (B, C, M, 3), ok (B, C, M) float: valid, inside and every channel within `gate`).
    previous: the last target (its Huber weights make one robust pass enough; None: two passes)."""
    ok = cb.valid * inside.to(observed.dtype)
    if previous is None:
        sh = fit_shading(observed, cb.albedo, cb.basis, ok)
    else:
        w = ok[..., None] * huber_weight((observed - previous).abs(), SHADING_HUBER)
        sh = fit_shading(observed, cb.albedo, cb.basis, w.amin(-1), iterations=1)
    target = cb.albedo * _shade(sh, cb.basis)
    return target, ok * ((observed - target).abs().amax(-1) < gate).to(observed.dtype)


class ColorTerm:
    """The photometric rows of one solve, on the raster term's samples (its model rows).

    `gate` (at each association) refits the shading at the current projections and fixes the
    target ρ and the samples used until the next call; until the first call, ρ is the albedo.
    """

    def __init__(self, raster: RasterTerm, cb: ColorBatch):
        self.raster, self.cb = raster, cb
        self.ok = cb.valid
        self.target = cb.albedo
        self.lens = None  # the lens Jacobian, fixed at the first gate's state

    def residuals(self, state, cameras: CameraBatch):
        """(residual (B, C, M, 3), inside (B, C, M), R X (B, C, M, 3), g_ref (B, C, M, 3, 3))."""
        r, t, _a, _b = state
        rp = torch.einsum("bij,bcmj->bcmi", r, self.raster.points(state))
        val, inside, g_ref = _photometric(self.cb, cameras, rp, t, self.lens)
        return val - self.target, inside, rp, g_ref

    def gate(self, state, cameras: CameraBatch, gate: float) -> None:
        """Refit the shading; fix ρ and the samples: valid, inside the crop, every channel within `gate`."""
        r, t, _a, _b = state
        rp = torch.einsum("bij,bcmj->bcmi", r, self.raster.points(state))
        first = self.lens is None  # (until then ρ is the albedo: no earlier target to start from)
        if first:
            xc = torch.einsum("bcij,bcmj->bcmi", cameras.r, rp + t[:, None, None]) + cameras.t[:, :, None]
            self.lens = lens_jacobian(cameras, xc)
        val, inside, _ = _photometric(self.cb, cameras, rp, t, self.lens)
        self.target, self.ok = _shaded_target(self.cb, val, inside, gate, None if first else self.target)

    def cost_and_rows(self, state, cameras: CameraBatch, inv_sigma2: float, huber: float, n_par: int, with_jac: bool):
        """cost (B,) float64 and, with the Jacobian, (H (B, P, P), g (B, P)) float64 contributions."""
        res, inside, rp, g_ref = self.residuals(state, cameras)
        ok = (self.ok * inside.to(res.dtype))[..., None]
        ar = res.abs()
        cost = inv_sigma2 * (huber_cost(ar, huber) * ok).to(torch.float64).sum((1, 2, 3))
        if not with_jac:
            return cost, None, None
        term = self.raster
        nm = torch.einsum("bcmki,bij->bcmkj", g_ref, state[0])  # d r / d model point
        parts = [cross3(rp[..., None, :].expand_as(g_ref), g_ref), g_ref]
        if term.fit_identity and term.id is not None:
            parts.append(torch.einsum("bcmxi,bcmik->bcmxk", nm, term.id))
        if term.exp is not None:
            parts.append(torch.einsum("bcmxi,bcmik->bcmxk", nm, term.exp))
        h, g = normal_equations(parts, huber_weight(ar, huber) * (inv_sigma2 * ok), res, n_par)
        return cost, h, g


def color_offset_rows(rb: RasterBatch, cb: ColorBatch, cameras: CameraBatch, rotation: torch.Tensor,
                      translation: torch.Tensor, full: torch.Tensor, offsets: torch.Tensor, inv_sigma2: float,
                      huber: float, gate: float):
    """The photometric rows' per-vertex blocks for the offset step (as `raster_term.offset_rows`:
    each sample is a row on every vertex of its triangle, weighted by that vertex's barycentric),
    the shading refitted at the pose after the LM iterations.

    Returns:
        (h (B, 3, 3, N), g (B, 3, N), has_data (B,) bool), `offsets.offset_step` units.
    """
    c, w = rb.corners, rb.weights
    rp = torch.einsum("bij,bcmj->bcmi", rotation, interp_batched(full, c, w))
    val, inside, g_ref = _photometric(cb, cameras, rp, translation)
    target, ok = _shaded_target(cb, val, inside, gate)
    res = val - target
    wt = huber_weight(res.abs(), huber) * (inv_sigma2 * ok[..., None])  # (B, C, M, 3 channels)
    g_model = torch.einsum("bcmxi,bij->bcmxj", g_ref, rotation)  # (B, C, M, 3 channels, 3)
    off_c = gather_corners(offsets, c)  # (B, C, M, 3 corners, 3)
    # Row of channel x on corner k: r(d_k) = res_x + g_xᵀ (d_k − d_k now).
    const = res[..., None, :] - torch.einsum("bcmxi,bcmki->bcmkx", g_model, off_c)  # (B, C, M, 3, 3)
    wk = wt[..., None, :] * w[..., None]  # (B, C, M, 3 corners, 3 channels)
    blocks = torch.einsum("bcmkx,bcmxi,bcmxj->bcmkij", wk, g_model, g_model)
    grads = torch.einsum("bcmkx,bcmxi->bcmki", wk * const, g_model)
    h, g = scatter_corner_blocks(c, blocks, grads, full)
    return h, g, ok.sum((1, 2)) > 0
