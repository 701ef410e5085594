"""Small rigid-geometry helpers for the fitter: SO(3) exponential/logarithm, skew, Kabsch.

Rotations act on column vectors (`X' = R @ X`); axis-angle vectors are radians.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["so3_exp", "so3_log", "so3_exp_batch", "so3_log_batch", "orthonormalize_batch",
           "skew_torch", "kabsch", "invert_rigid"]


def so3_exp(w: np.ndarray) -> np.ndarray:
    """Axis-angle (3,) radians -> rotation matrix (3, 3) float64 (Rodrigues)."""
    w = np.asarray(w, dtype=np.float64).reshape(3)
    theta = float(np.linalg.norm(w))
    k = np.array([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]])
    if theta < 1e-8:
        return np.eye(3) + k + 0.5 * k @ k
    return np.eye(3) + np.sin(theta) / theta * k + (1 - np.cos(theta)) / theta**2 * k @ k


def so3_log(r: np.ndarray) -> np.ndarray:
    """Rotation matrix (3, 3) -> axis-angle (3,) float64, radians in [0, π]."""
    r = np.asarray(r, dtype=np.float64)
    cos = np.clip((np.trace(r) - 1) / 2, -1.0, 1.0)
    theta = float(np.arccos(cos))
    v = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    if theta < 1e-6:
        return 0.5 * v
    if np.pi - theta < 1e-4:
        # Near π the antisymmetric part vanishes: take the axis from the symmetric part.
        m = (r + np.eye(3)) / 2
        axis = m[int(np.argmax(np.diag(m)))]
        axis = axis / np.linalg.norm(axis)
        if v @ axis < 0:
            axis = -axis
        return axis * theta
    return v * (theta / (2 * np.sin(theta)))


def skew_torch(v: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (..., 3, 3) cross-product matrices: skew(a) @ b == cross(a, b)."""
    z = torch.zeros_like(v[..., 0])
    return torch.stack([
        torch.stack([z, -v[..., 2], v[..., 1]], -1),
        torch.stack([v[..., 2], z, -v[..., 0]], -1),
        torch.stack([-v[..., 1], v[..., 0], z], -1),
    ], -2)


def so3_exp_batch(w: torch.Tensor) -> torch.Tensor:
    """Axis-angle (B, 3) radians -> rotations (B, 3, 3) (Rodrigues), no host decisions.

    Near θ = 0 the coefficients sin θ/θ and (1 - cos θ)/θ² take their Taylor series.
    """
    theta2 = (w * w).sum(-1)
    small = theta2 < 1e-8
    theta = torch.sqrt(torch.where(small, torch.ones_like(theta2), theta2))
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / (theta * theta))
    k = skew_torch(w)
    eye = torch.eye(3, dtype=w.dtype, device=w.device)
    return eye + a[:, None, None] * k + b[:, None, None] * (k @ k)


def so3_log_batch(r: torch.Tensor) -> torch.Tensor:
    """Rotations (B, 3, 3) -> axis-angle (B, 3), for angles below π (frame-to-frame changes)."""
    v = 0.5 * torch.stack([r[:, 2, 1] - r[:, 1, 2], r[:, 0, 2] - r[:, 2, 0], r[:, 1, 0] - r[:, 0, 1]], -1)
    sin = torch.linalg.norm(v, dim=-1)
    cos = 0.5 * (r[:, 0, 0] + r[:, 1, 1] + r[:, 2, 2] - 1)
    theta = torch.atan2(sin, cos)
    scale = torch.where(sin < 1e-7, torch.ones_like(sin), theta / sin.clamp_min(1e-7))
    return v * scale[:, None]


def orthonormalize_batch(r: torch.Tensor, steps: int = 3) -> torch.Tensor:
    """Nearest rotations to nearly orthonormal (B, 3, 3) matrices (Newton-Schulz polar iterations).

    Float32 rotation updates drift by ~1e-7 per step; three iterations bring that to rounding.
    """
    eye = torch.eye(3, dtype=r.dtype, device=r.device)
    for _ in range(steps):
        r = 0.5 * r @ (3 * eye - r.transpose(-1, -2) @ r)
    return r


def kabsch(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rigid (R, t) minimising Σ w ||R src + t - dst||² (Kabsch 1976); src, dst (M, 3), M >= 3."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or src.shape[0] < 3:
        raise ValueError(f"kabsch needs two (M >= 3, 3) arrays of equal shape, got {src.shape} and {dst.shape}")
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    cs, cd = w @ src, w @ dst
    h = ((src - cs) * w[:, None]).T @ (dst - cd)
    u, _s, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return r, cd - r @ cs


def invert_rigid(t: np.ndarray) -> np.ndarray:
    """Inverse of a 4x4 rigid transform."""
    t = np.asarray(t, dtype=np.float64)
    out = np.eye(4)
    out[:3, :3] = t[:3, :3].T
    out[:3, 3] = -t[:3, :3].T @ t[:3, 3]
    return out
