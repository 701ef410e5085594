"""Rigid transforms: the package's one rotation + translation type (numpy, float64, metres)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmface4d_stream.arrays import as_float, is_torch

__all__ = ["RigidTransform"]


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
