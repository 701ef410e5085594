"""A face model prepared for the batched solver: the tensors and tables every frame reuses.

Built once per (model, config, device) and shared by every stream fitted with that model. Holds
the basis rows of the three vertex subsets the solver touches (landmark vertices, the depth-term
samples, the offset step's data vertices) and the offset step's sparse smoothness operator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mmface4d_stream.face.models import FaceModel
from mmface4d_stream.fit.landmark_weights import landmark_weights
from mmface4d_stream.fit.regularizers import OffsetRegularizer

__all__ = ["ModelPack", "apply_basis", "cross3", "small_matmul", "vertex_normals"]


def cross3(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Cross products of (..., 3) vectors written out (several times faster than linalg.cross on CPU)."""
    u0, u1, u2 = u.unbind(-1)
    v0, v1, v2 = v.unbind(-1)
    return torch.stack([u1 * v2 - u2 * v1, u2 * v0 - u0 * v2, u0 * v1 - u1 * v0], -1)


def small_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (..., R, J) @ b (..., J, K) for many tiny matrices (per-point Jacobian blocks), as J multiply-adds.

    Same result as `a @ b` up to rounding; torch's CPU batched GEMM takes matrices this small
    (R·J·K < 400) through a scalar loop several times slower than J vectorized multiply-adds.
    """
    out = a[..., :, 0:1] * b[..., 0:1, :]
    for j in range(1, a.shape[-1]):
        out = torch.addcmul(out, a[..., :, j:j + 1], b[..., j:j + 1, :])
    return out


def vertex_normals(vertices: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals of a batch of meshes.

    Args:
        vertices: (B, N, 3).  triangles: (F, 3) long.
    Returns:
        (B, N, 3) unit normals (the sum of the incident triangles' cross products, normalized).
    """
    bsz, n_v = vertices.shape[:2]
    # Vertex-major (N, B, 3) layout: the scatter-adds run along the first dimension (the fast path).
    v = vertices.transpose(0, 1).contiguous()
    a, b, c = (v.index_select(0, triangles[:, k]) for k in range(3))
    fn = cross3(b - a, c - a).reshape(-1, bsz * 3)
    n = fn.new_zeros((n_v, bsz * 3))
    for k in range(3):
        n.index_add_(0, triangles[:, k], fn)
    n = n.reshape(n_v, bsz, 3).transpose(0, 1)
    return n * torch.rsqrt((n * n).sum(-1, keepdim=True).clamp_min(1e-24))


@dataclass
class ModelPack:
    """Device tensors of one model for the solver (shared, never modified).

    Attributes:
        model: the FaceModel.  n_vertices N, n_id K_id, n_exp K_exp, n_landmarks L.
        mean (N, 3), id_basis (N, 3, K_id), exp_basis (N, 3, K_exp), metres.  triangles (F, 3) long.
        lm_vertex (L,); lm_mean (L, 3); lm_id (L, 3, K_id); lm_exp (L, 3, K_exp) float32 (Jacobians),
            lm_id64, lm_exp64 their float64 copies (`apply_basis`).
        samples (S,): the depth term's vertices (a fixed random subset, seed 0), also as numpy in
            samples_host; s_mean, s_id, s_exp, s_id64, s_exp64 likewise.
        offset_vertices (M,): the offset step's depth-data vertices.
        regularizer: the offset step's smoothness operator (None when offsets are disabled).
        lm_weight (L,) float64 numpy: each landmark's weight (`landmark_weights.landmark_weights`),
            multiplied into the observed confidences.
    """

    model: FaceModel
    device: torch.device
    mean: torch.Tensor
    id_basis: torch.Tensor
    exp_basis: torch.Tensor
    triangles: torch.Tensor
    lm_vertex: torch.Tensor
    lm_mean: torch.Tensor
    lm_id: torch.Tensor
    lm_exp: torch.Tensor
    lm_id64: torch.Tensor
    lm_exp64: torch.Tensor
    samples: torch.Tensor
    samples_host: np.ndarray
    s_mean: torch.Tensor
    s_id: torch.Tensor
    s_exp: torch.Tensor
    s_id64: torch.Tensor
    s_exp64: torch.Tensor
    offset_vertices: torch.Tensor
    regularizer: OffsetRegularizer | None
    lm_weight: np.ndarray

    @classmethod
    def build(cls, model: FaceModel, config, device) -> "ModelPack":
        """Prepare `model` for `config` (a fit.fitter.FitterConfig) on `device`."""
        dev = torch.device(device)
        t = model.to_torch(dev)
        candidates = np.setdiff1d(np.arange(model.n_vertices), model.depth_excluded)
        rng = np.random.default_rng(0)
        k = min(config.depth_samples, len(candidates))
        samples = np.sort(rng.choice(candidates, size=k, replace=False))
        k_off = min(config.offset_data_vertices, len(candidates))
        offset_data = candidates if k_off == len(candidates) else np.sort(rng.choice(candidates, size=k_off, replace=False))
        tri = np.asarray(model.triangles, dtype=np.int64)
        long = dict(dtype=torch.int64, device=dev)
        s_idx = torch.as_tensor(samples, **long)
        lm_v = t.landmark_vertex
        regularizer = None
        if config.offsets:
            w = 1.0 / config.depth_sigma_m**2
            regularizer = OffsetRegularizer(model.n_vertices, tri, config.offset_laplacian_weight * w,
                                            config.offset_edge_weight * w, dev)
        id64, exp64 = t.id_basis.to(torch.float64), t.exp_basis.to(torch.float64)
        return cls(
            model=model, device=dev,
            mean=t.mean_shape, id_basis=t.id_basis, exp_basis=t.exp_basis,
            triangles=t.triangles,
            lm_vertex=lm_v, lm_mean=t.mean_shape[lm_v], lm_id=t.id_basis[lm_v].contiguous(),
            lm_exp=t.exp_basis[lm_v].contiguous(), lm_id64=id64[lm_v].contiguous(), lm_exp64=exp64[lm_v].contiguous(),
            samples=s_idx, samples_host=samples, s_mean=t.mean_shape[s_idx], s_id=t.id_basis[s_idx].contiguous(),
            s_exp=t.exp_basis[s_idx].contiguous(), s_id64=id64[s_idx].contiguous(), s_exp64=exp64[s_idx].contiguous(),
            offset_vertices=torch.as_tensor(offset_data, **long),
            regularizer=regularizer,
            lm_weight=landmark_weights(model, config.landmark_lower_face_weight),
        )

    def identity_shape(self, alpha: torch.Tensor) -> torch.Tensor:
        """mean + B_id α for a batch: alpha (B, K_id) -> (B, N, 3) metres, model frame."""
        return self.mean + apply_basis(self.id_basis, alpha)

    def shape(self, v_id: torch.Tensor, beta: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Model-frame vertices (B, N, 3): the identity part (B, N, 3) + B_exp β (β (B, K_exp)) + offsets."""
        return v_id + apply_basis(self.exp_basis, beta) + offsets

    @property
    def n_vertices(self) -> int:
        return self.model.n_vertices

    @property
    def n_id(self) -> int:
        return self.model.n_id

    @property
    def n_exp(self) -> int:
        return self.model.n_exp

    @property
    def n_landmarks(self) -> int:
        return self.model.n_landmarks


def apply_basis(basis: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Σ_k basis[..., k] coeffs[b, k] for a batch: basis (V, 3, K), coeffs (B, K) float32 -> (B, V, 3) float32.

    Batch-invariant: a stream's result does not depend on the other streams of its batch (a GEMM's
    summation order depends on B, and float32 rounding differences would now and then move a point
    across a pixel boundary of the depth association). A float64 basis (the small vertex subsets)
    takes one float64 (B, K) x (K, 3V) product, whose rounding is far below float32's; a float32
    basis (the whole mesh, where float64 would double the memory traffic) takes one float32
    matrix-vector product per stream, the same kernel whatever B.
    """
    v, _, k = basis.shape
    if k == 0:
        return coeffs.new_zeros((coeffs.shape[0], v, 3))
    flat = basis.reshape(v * 3, k)
    if basis.dtype == torch.float64:
        return (coeffs.to(torch.float64) @ flat.T).to(coeffs.dtype).reshape(-1, v, 3)
    return torch.stack([flat @ c for c in coeffs.unbind(0)]).reshape(-1, v, 3)
