"""The rasterized (dense) depth term: per-pixel correspondences from a rendering of the model.

Once per frame, outside the solve, the frame's starting mesh (the warm start, or a cold start's
initial shape) is rasterized into each camera's depth crop at the depth samples' stride
(`fit.raster`: triangle id and barycentrics per depth sample, the GL backend on a CPU, nvdiffrast
on CUDA). The registered depth crop is
lifted to points and normals (`depth_term.lift_patches`, at full resolution); pixels where both the
model and the measurement exist, and agree within a gate, are spread evenly down to a fixed number
of samples per camera. Each sample is a fixed surface point of the model (a triangle and its
barycentrics w) and a measured point p with normal n:

    X(θ) = Σ_k w_k X_k(θ)                     the model point, moving with the vertices
    r    = nᵀ (R_c (R X + t) + t_c − p)       point-to-plane, metres

Inside the solve (`lm_solver._Terms`), the samples' interpolated model rows (mean, identity and
expression bases, offsets at the barycentrics) give the residuals and their analytic Jacobians, as
nvdiffrast's `interpolate` would with the rasterization held fixed: they join the LM normal
equations with the same Huber weighting as the sparse depth term. The offset step
(`offsets.offset_step`) takes each sample as a row on each of its triangle's vertices, weighted by
that vertex's barycentric (`offset_rows`). Shapes are fixed (B, C, M) with a validity mask; nothing
here reads the device inside the solve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from mmface4d_stream.fit.depth_term import CameraBatch, PatchBatch
from mmface4d_stream.fit.landmark_term import huber_cost, huber_weight, normal_equations
from mmface4d_stream.fit.model_pack import ModelPack, cross3
from mmface4d_stream.fit.raster import Rasterizer, gather_corners

__all__ = ["RasterBatch", "RasterView", "prepare_raster", "targets", "RasterTerm", "offset_rows", "interp_batched",
           "scatter_corner_blocks"]


@dataclass
class RasterBatch:
    """Fixed per-pixel samples of B streams x C cameras, M per camera (the solve's inputs).

    Attributes:
        corners: (B, C, M, 3) long vertex ids of each sample's triangle (0 in padding).
        weights: (B, C, M, 3) float32 barycentrics of the corners (sum 1).
        pixel: (B, C, M) long index of the sample's depth patch sample (row * W + column of the
            solve's `PatchBatch`, whose samples sit every `depth_stride` pixels of the crop).
        valid: (B, C, M) float32 1 for a sample, 0 for padding.
    """

    corners: torch.Tensor
    weights: torch.Tensor
    pixel: torch.Tensor
    valid: torch.Tensor


@dataclass
class RasterView:
    """One camera of one frame to rasterize.

    camera: its `FitCamera`.  r_cam_from_ref (3, 3), t_cam_from_ref (3,): reference -> camera.
    depth_mm: uint16 (h, w) the strided depth crop (`frame_prep.DepthCrop.depth_mm`).
    x0, y0: its top-left pixel.  stride: pixels between its samples.
    """

    camera: object
    r_cam_from_ref: np.ndarray
    t_cam_from_ref: np.ndarray
    depth_mm: np.ndarray
    x0: int
    y0: int
    stride: int


def _spread(n_valid: int, m: int) -> np.ndarray:
    """m indices spread evenly over range(n_valid) (all of them when there are fewer)."""
    if n_valid <= m:
        return np.arange(n_valid)
    return (np.arange(m) * n_valid) // m


def prepare_raster(rasterizer: Rasterizer, frames: Sequence[Sequence[RasterView | None]],
                   vertices_ref: Sequence[np.ndarray], n_cameras: int, patch_width: int, n_samples: int,
                   gate_m: float, device) -> RasterBatch:
    """Rasterize each frame's starting mesh into its cameras' depth crops and pick the samples.

    The crop is rasterized at the depth samples' stride (one output pixel per depth sample: the
    same camera through a viewport `stride` times smaller); a sample is a depth sample that sees
    the model, has a measurement, and whose model and measured depths agree within `gate_m` (hair,
    neck, background and occlusions left out).

    Args:
        rasterizer: a `fit.raster.Rasterizer` for the model's topology (its `triangles`).
        frames: B lists of views (None: the camera has no depth crop), at most n_cameras each.
        vertices_ref: B starting meshes (N, 3), reference frame, metres.
        patch_width: W of the solve's padded depth patches (`collate_crops`).
        n_samples: M, samples kept per camera.
    Returns:
        `RasterBatch` on `device`.
    """
    b = len(frames)
    m = int(n_samples)
    corners = np.zeros((b, n_cameras, m, 3), np.int64)
    weights = np.zeros((b, n_cameras, m, 3), np.float32)
    weights[..., 2] = 1.0
    pixel = np.zeros((b, n_cameras, m), np.int64)
    valid = np.zeros((b, n_cameras, m), np.float32)
    tri = rasterizer.triangles
    for i, views in enumerate(frames):
        ks = [k for k, v in enumerate(views) if v is not None]
        if not ks:
            continue
        v_ref = np.asarray(vertices_ref[i], np.float64)
        vcam = np.stack([v_ref @ views[k].r_cam_from_ref.T + views[k].t_cam_from_ref for k in ks]).astype(np.float32)
        s = views[ks[0]].stride
        if any(views[k].stride != s for k in ks):
            raise ValueError("the views of one frame need one stride")
        crops = np.array([(views[k].x0, views[k].y0, views[k].depth_mm.shape[1] * s,
                           views[k].depth_mm.shape[0] * s) for k in ks], np.int64)
        # At the depth samples' stride: one output pixel per depth sample (same camera, smaller viewport).
        raster = rasterizer.rasterize(torch.from_numpy(vcam), [views[k].camera for k in ks], crops, stride=s)
        ids_all = raster.tri_ids.cpu().numpy()
        bary_all = raster.barycentrics.cpu().numpy()
        for j, k in enumerate(ks):
            view = views[k]
            h, w = view.depth_mm.shape
            ids = ids_all[j, :h, :w]
            depth = view.depth_mm[:ids.shape[0], :ids.shape[1]]
            flat = np.flatnonzero((ids >= 0) & (depth > 0))
            rows, cols = np.divmod(flat, ids.shape[1])
            cor = tri[ids.reshape(-1)[flat]]
            bary = bary_all[j, :h, :w].reshape(-1, 2)[flat]
            z = vcam[j, :, 2][cor]
            # z of the sample: b0 z0 + b1 z1 + (1 - b0 - b1) z2.
            z_model = z[:, 2] + bary[:, 0] * (z[:, 0] - z[:, 2]) + bary[:, 1] * (z[:, 1] - z[:, 2])
            keep = np.flatnonzero(np.abs(z_model - depth.reshape(-1)[flat] * np.float32(1e-3)) < gate_m)
            pick = keep[_spread(len(keep), m)]
            n = len(pick)
            corners[i, k, :n] = cor[pick]
            weights[i, k, :n, :2] = bary[pick]
            weights[i, k, :n, 2] = 1 - bary[pick].sum(-1)
            pixel[i, k, :n] = rows[pick] * int(patch_width) + cols[pick]
            valid[i, k, :n] = 1.0

    def dev(a):
        return torch.as_tensor(a).to(device, non_blocking=True)

    return RasterBatch(dev(corners), dev(weights), dev(pixel), dev(valid))


def targets(rb: RasterBatch, patches: PatchBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The samples' measured points and normals (B, C, M, 3), camera frame, and validity (B, C, M)
    float 0/1, from the solve's lifted depth patches."""
    idx3 = rb.pixel[..., None].expand(*rb.pixel.shape, 3)
    p = torch.gather(patches.points, 2, idx3)
    n = torch.gather(patches.normals, 2, idx3)
    ok = torch.gather(patches.valid, 2, rb.pixel).to(p.dtype) * rb.valid
    return p, n, ok


def _interp_shared(table: torch.Tensor, corners: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_k w_k table[corner_k] of a model table (N, ...) at (B, C, M, 3) corners -> (B, C, M, ...)."""
    got = table[corners]
    w = weights.reshape(*weights.shape, *([1] * (got.dim() - weights.dim())))
    return (got * w).sum(3)


def interp_batched(table: torch.Tensor, corners: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_k w_k table[b, corner_k] of per-stream rows (B, N, 3) -> (B, C, M, 3)."""
    return (gather_corners(table, corners) * weights[..., None]).sum(-2)


class RasterTerm:
    """The raster samples' model rows for one solve, and their residuals and Jacobians.

    Args:
        pack: the model.  rb: the frame's `RasterBatch`.  patches: the solve's lifted depth patches.
        v_id (B, N, 3), offsets (B, N, 3): the fixed identity part and offsets.  fit_identity: α is
        a parameter.
    """

    def __init__(self, pack: ModelPack, rb: RasterBatch, patches: PatchBatch, v_id: torch.Tensor,
                 offsets: torch.Tensor, fit_identity: bool):
        self.rb = rb
        self.target, self.normal, self.valid = targets(rb, patches)
        c, w = rb.corners, rb.weights
        self.fit_identity = fit_identity
        self.mean = _interp_shared(pack.mean, c, w)
        self.exp = _interp_shared(pack.exp_basis, c, w) if pack.n_exp else None
        self.id = _interp_shared(pack.id_basis, c, w) if fit_identity else None
        self.fix_shape(v_id, offsets)
        self.ok = self.valid

    def fix_shape(self, v_id: torch.Tensor, offsets: torch.Tensor) -> None:
        c, w = self.rb.corners, self.rb.weights
        self.vid = interp_batched(v_id, c, w)
        self.off = interp_batched(offsets, c, w)

    def points(self, state) -> torch.Tensor:
        """Model-frame sample points (B, C, M, 3) of a state."""
        _r, _t, alpha, beta = state
        base = self.mean + torch.einsum("bcmik,bk->bcmi", self.id, alpha) if self.fit_identity else self.vid
        if self.exp is not None:
            base = base + torch.einsum("bcmik,bk->bcmi", self.exp, beta)
        return base + self.off

    def residuals(self, state, cameras: CameraBatch):
        """(residual (B, C, M) metres, R X (B, C, M, 3), g_ref = nᵀ R_c (B, C, M, 3))."""
        r, t, _a, _b = state
        rp = torch.einsum("bij,bcmj->bcmi", r, self.points(state))
        xc = torch.einsum("bcij,bcmj->bcmi", cameras.r, rp + t[:, None, None]) + cameras.t[:, :, None]
        n = self.normal
        res = (n * (xc - self.target)).sum(-1)
        return res, rp, torch.einsum("bcmi,bcij->bcmj", n, cameras.r)

    def gate(self, state, cameras: CameraBatch, gate_m: float) -> None:
        """Fix the samples used until the next call: valid and within `gate_m` of their plane."""
        res, _, _ = self.residuals(state, cameras)
        self.ok = self.valid * (res.abs() < gate_m).to(res.dtype)

    def cost_and_rows(self, state, cameras: CameraBatch, inv_sigma2: float, huber_m: float, n_par: int,
                      with_jac: bool):
        """cost (B,) float64 and, with the Jacobian, (H (B, P, P), g (B, P)) float64 contributions."""
        res, rp, g_ref = self.residuals(state, cameras)
        ar = res.abs()
        cost = inv_sigma2 * (huber_cost(ar, huber_m) * self.ok).to(torch.float64).sum((1, 2))
        if not with_jac:
            return cost, None, None
        r = state[0]
        nm = torch.einsum("bcmi,bij->bcmj", g_ref, r)  # normals in the model frame
        parts = [cross3(rp, g_ref), g_ref]
        if self.fit_identity and self.id is not None:
            parts.append(torch.einsum("bcmi,bcmik->bcmk", nm, self.id))
        if self.exp is not None:
            parts.append(torch.einsum("bcmi,bcmik->bcmk", nm, self.exp))
        h, g = normal_equations(parts, huber_weight(ar, huber_m) * (inv_sigma2 * self.ok), res, n_par)
        return cost, h, g


def offset_rows(rb: RasterBatch, patches: PatchBatch, cameras: CameraBatch, rotation: torch.Tensor, translation: torch.Tensor,
                full: torch.Tensor, offsets: torch.Tensor, inv_sigma2: float, huber_m: float, gate_m: float):
    """The raster samples' per-vertex blocks for the offset step.

    Each sample is a point-to-plane row on every vertex k of its triangle, weighted by its
    barycentric w_k, as if that vertex's offset alone moved the point (the offset step's normal
    equations are per-vertex 3x3 blocks; the smoothness terms couple neighbours).

    Args:
        rb: the frame's samples.  patches: the solve's lifted depth patches.  rotation (B, 3, 3), translation (B, 3): the pose after the LM
        iterations.  full, offsets: (B, N, 3) model-frame vertices and their current offsets.
    Returns:
        (h (B, 3, 3, N), g (B, 3, N), has_data (B,) bool) to add to the step's data blocks, in
        the units of `offsets.offset_step` (H d = -g form).
    """
    c, w = rb.corners, rb.weights
    x = interp_batched(full, c, w)
    rp = torch.einsum("bij,bcmj->bcmi", rotation, x)
    xc = torch.einsum("bcij,bcmj->bcmi", cameras.r, rp + translation[:, None, None]) + cameras.t[:, :, None]
    p, nd, ok = targets(rb, patches)
    res = (nd * (xc - p)).sum(-1)
    ok = ok * (res.abs() < gate_m).to(res.dtype)
    wt = huber_weight(res.abs(), huber_m) * (inv_sigma2 * ok)  # (B, C, M)
    n_model = torch.einsum("bcmi,bcij,bjk->bcmk", nd, cameras.r, rotation)  # (B, C, M, 3)
    off_c = gather_corners(offsets, c)  # (B, C, M, 3 corners, 3)
    # Row of corner k: r(d_k) = res + nᵀ (d_k − d_k now) = nᵀ d_k + const_k.
    const = res[..., None] - (n_model[..., None, :] * off_c).sum(-1)  # (B, C, M, 3)
    wk = wt[..., None] * w  # (B, C, M, 3)
    blocks = wk[..., None, None] * (n_model[..., None, :, None] * n_model[..., None, None, :])  # (B, C, M, 3, 3, 3)
    grads = (wk * const)[..., None] * n_model[..., None, :]  # (B, C, M, 3, 3)
    h, g = scatter_corner_blocks(c, blocks, grads, full)
    return h, g, ok.sum((1, 2)) > 0


def scatter_corner_blocks(corners: torch.Tensor, blocks: torch.Tensor, grads: torch.Tensor, full: torch.Tensor):
    """Sum per-corner 3x3 blocks (B, C, M, 3, 3, 3) and gradients (B, C, M, 3, 3) of samples with
    corners (B, C, M, 3) onto their vertices: (h (B, 3, 3, N), g (B, 3, N)) (`offsets.offset_step`'s
    layout; N and the dtype from `full` (B, N, 3))."""
    b, n = full.shape[:2]
    idx = (corners + torch.arange(b, device=corners.device)[:, None, None, None] * n).reshape(-1)
    h_flat = full.new_zeros((b * n, 9)).index_add_(0, idx, blocks.reshape(-1, 9))
    g_flat = full.new_zeros((b * n, 3)).index_add_(0, idx, grads.reshape(-1, 3))
    return h_flat.reshape(b, n, 3, 3).permute(0, 2, 3, 1), g_flat.reshape(b, n, 3).permute(0, 2, 1)
