"""The landmark term, batched over streams and cameras: pinhole reprojection residuals and Jacobians.

Landmarks are observed in the raw (distorted) colour image. Rather than differentiate through the
lens model, each observed landmark is undistorted once per frame on the host to the ideal pinhole
image (`FitCamera.undistort_to_pinhole_px`), and the model's landmark vertices are compared with
their plain pinhole projections: same pixel scale, a simple analytic Jacobian. Every camera carries
the whole landmark table with confidence 0 where it did not observe a point (fixed shapes).
"""

from __future__ import annotations

import torch

from mmface4d_stream.fit.depth_term import CameraBatch

__all__ = ["huber_weight", "huber_cost", "normal_equations", "project_pinhole_batch", "landmark_rows", "rows_times"]


def huber_weight(abs_r: torch.Tensor, k: float) -> torch.Tensor:
    """IRLS weight ρ'(r) / 2r of the Huber cost: 1 inside k, k/|r| outside."""
    return torch.where(abs_r <= k, torch.ones_like(abs_r), k / abs_r.clamp_min(1e-12))


def huber_cost(abs_r: torch.Tensor, k: float) -> torch.Tensor:
    """Huber cost ρ(r): r² inside k, 2k|r| - k² outside (continuous, with continuous slope)."""
    return torch.where(abs_r <= k, abs_r * abs_r, 2 * k * abs_r - k * k)


def normal_equations(parts: list[torch.Tensor], weight: torch.Tensor, res: torch.Tensor,
                     n_par: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted Gauss-Newton blocks of one term's rows, accumulated in float64.

    Args:
        parts: Jacobian column blocks (B, ..., P_i) of the rows of `res` (B, ...), concatenated to P = n_par.
        weight: per-row weights, `res`'s shape (IRLS Huber weight x 1/σ² x validity).
    Returns:
        (H = Jᵀ W J (B, P, P), g = Jᵀ W r (B, P)) float64.
    """
    b = res.shape[0]
    j = torch.cat(parts, -1).reshape(b, -1, n_par).to(torch.float64)
    jw = j * weight.reshape(b, -1, 1).to(torch.float64)
    return jw.transpose(1, 2) @ j, (jw.transpose(1, 2) @ res.reshape(b, -1, 1).to(torch.float64))[..., 0]


def project_pinhole_batch(cameras: CameraBatch, points_ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pinhole projection into every camera, and its Jacobian.

    Args:
        points_ref: (B, L, 3) reference-frame points, metres.
    Returns:
        uv (B, C, L, 2) pixels, d uv / d camera-frame point (B, C, L, 2, 3) pixels per metre.
    """
    xc = cameras.to_cameras(points_ref)
    iz = 1.0 / xc[..., 2:3].clamp_min(1e-6)
    xy = xc[..., :2] * iz
    f = cameras.focal[:, :, None]
    uv = xy * f + cameras.centre[:, :, None]
    fi = f * iz
    zero = torch.zeros_like(iz[..., 0])
    jp = torch.stack([
        torch.stack([fi[..., 0], zero, -fi[..., 0] * xy[..., 0]], -1),
        torch.stack([zero, fi[..., 1], -fi[..., 1] * xy[..., 1]], -1),
    ], -2)
    return uv, jp


def rows_times(rows: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Jacobian rows (B, C, L, R, 3) times one 3x3 matrix per camera (B, C, 3, 3) or per stream
    (B, 1, 3, 3): one (L·R, 3) x (3, 3) product each, not L tiny ones (torch's CPU batched GEMM
    takes those through a scalar loop)."""
    return (rows.flatten(2, 3) @ m).unflatten(2, rows.shape[2:4])


def landmark_rows(cameras: CameraBatch, target: torch.Tensor, points_ref: torch.Tensor):
    """Residuals of the landmark term and their Jacobian with respect to the reference-frame points.

    Args:
        target: (B, C, L, 2) pinhole pixels.  points_ref: (B, L, 3) model landmarks, reference frame.
    Returns:
        residual (B, C, L, 2) pixels, its norm (B, C, L), d uv / d reference-frame point (B, C, L, 2, 3).
    """
    uv, jp = project_pinhole_batch(cameras, points_ref)
    res = uv - target
    return res, torch.linalg.norm(res, dim=-1), rows_times(jp, cameras.r)
