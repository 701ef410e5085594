"""Streaming principal directions of mesh displacements: Frequent Directions.

Keeps a sketch of `2 * rank` rows of the stream's dimension D (3 x vertices), never the stream:
memory is O(rank * D) whatever the number of frames, so a BFM corpus (D = 107k) costs tens of MB.
The sketch's top right singular vectors approximate the stream's principal directions with
covariance error at most ||A||_F^2 / rank.

Reference: E. Liberty, "Simple and deterministic matrix sketching", KDD 2013.
"""

from __future__ import annotations

import numpy as np

__all__ = ["FrequentDirections"]


class FrequentDirections:
    """Sketch of rows (n, D) pushed in any batches; `components(k)` gives (k, D) orthonormal rows."""

    def __init__(self, dim: int, rank: int):
        if dim < 1 or rank < 1:
            raise ValueError(f"dim and rank must be positive, got {dim}, {rank}")
        self.dim = dim
        self.ell = 2 * rank
        self._sketch = np.zeros((2 * self.ell, dim), dtype=np.float64)
        self._filled = 0
        self.rows_seen = 0

    def push(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, self.dim)
        self.rows_seen += len(rows)
        for start in range(0, len(rows), self.ell):
            chunk = rows[start:start + self.ell]
            if self._filled + len(chunk) > len(self._sketch):
                self._shrink()
            self._sketch[self._filled:self._filled + len(chunk)] = chunk
            self._filled += len(chunk)

    def _shrink(self) -> None:
        _, s, vt = np.linalg.svd(self._sketch[:self._filled], full_matrices=False)
        delta = s[min(self.ell, len(s)) - 1] ** 2 if len(s) >= self.ell else 0.0
        s = np.sqrt(np.maximum(s**2 - delta, 0.0))
        keep = min(self.ell - 1, len(s))
        self._sketch[:] = 0.0
        self._sketch[:keep] = s[:keep, None] * vt[:keep]
        self._filled = keep

    def components(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(basis (k', D) float32 orthonormal rows, singular values (k',)); k' <= k drops null directions."""
        _, s, vt = np.linalg.svd(self._sketch[:self._filled], full_matrices=False)
        keep = int(np.sum(s > s[0] * 1e-6)) if len(s) and s[0] > 0 else 0
        keep = min(k, keep)
        return vt[:keep].astype(np.float32), s[:keep]
