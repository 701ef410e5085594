"""Rigid geometry on the host (numpy, float64): the package's one rigid-transform type, one
Rodrigues formula (`so3_exp`, with its inverse `so3_log`) and one Kabsch alignment.

Rotations act on column vectors (`X' = R @ X`); axis-angle vectors are radians; translations are
metres. The fitter's batched torch versions (`fit.geometry.so3_exp_batch`, `so3_log_batch`) are
the same formulas on (B, 3) tensors on the device, pinned to these by tests/fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmface4d_stream.arrays import as_float, is_torch

__all__ = ["RigidTransform", "so3_exp", "so3_log", "kabsch"]


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
        points = as_float(points)
        if points.shape[-1] != 3:
            raise ValueError(f"points must have shape (..., 3), got {tuple(points.shape)}.")
        if is_torch(points):
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


def kabsch(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rigid (R (3, 3), t (3,)) minimising Σ w_i ||R src_i + t - dst_i||² (Kabsch 1976; Umeyama
    1991, no scale). src, dst: (M, 3) corresponding points, M >= 3, not all collinear; weights:
    optional (M,) >= 0 with a positive sum. `RigidTransform(*kabsch(src, dst))` for the type."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or src.shape[0] < 3:
        raise ValueError(f"kabsch needs two (M >= 3, 3) arrays of equal shape, got {src.shape} and {dst.shape}")
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(src),) or (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights must be (M,) non-negative with a positive sum")
    w = w / w.sum()
    cs, cd = w @ src, w @ dst
    h = ((src - cs) * w[:, None]).T @ (dst - cd)
    u, _s, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return r, cd - r @ cs
