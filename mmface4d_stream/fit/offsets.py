"""The per-vertex offset step of a frame, batched: linearized data terms per vertex, then the sparse solve.

With the pose and coefficients of the LM iterations fixed, the offsets D (B, N, 3) take one
regularized least-squares step (`regularizers.OffsetRegularizer`): depth point-to-plane rows on a
fixed vertex subset (~2 mm apart on the BFM, about the depth sampling; the smoothness terms carry
them to every vertex) and the landmark rows of the mapped vertices, both linearized around the
current offsets, each vertex contributing a 3x3 block. Fixed shapes, no host reads.
"""

from __future__ import annotations

import torch

from mmface4d_stream.fit.depth_term import CameraBatch, PatchBatch
from mmface4d_stream.fit.landmark_term import huber_weight, project_pinhole_batch, rows_times
from mmface4d_stream.fit.model_pack import ModelPack, small_matmul
from mmface4d_stream.fit.raster_term import offset_rows
from mmface4d_stream.fit.color_term import color_offset_rows

__all__ = ["offset_step"]


def offset_step(pack: ModelPack, config, cameras: CameraBatch, patches: PatchBatch, rotation: torch.Tensor,
                translation: torch.Tensor, full: torch.Tensor, offsets: torch.Tensor, normals_sub: torch.Tensor,
                lm_target: torch.Tensor, lm_conf: torch.Tensor, raster=None, color=None) -> torch.Tensor:
    """New offsets for a batch of streams.

    Args:
        pack: the model.  config: fit.fitter.FitterConfig.
        rotation (B, 3, 3), translation (B, 3): model -> reference pose after the LM iterations.
        full: (B, N, 3) model-frame vertices with the current `offsets` (B, N, 3), metres.
        normals_sub: (B, M, 3) model-frame normals at `pack.offset_vertices` (visibility gating).
        lm_target (B, C, L, 2) pinhole pixels, lm_conf (B, C, L).
        raster: the rasterized depth term's samples (`raster_term.RasterBatch`) or None.
        color: the photometric term's inputs on them (`color_term.ColorBatch`) or None.
    Returns:
        offsets (B, N, 3) metres; a stream without any data keeps its offsets.
    """
    cfg = config
    b, n = full.shape[0], full.shape[1]
    rt = rotation.transpose(-1, -2)
    inv_d = 1.0 / cfg.depth_sigma_m**2
    sub = pack.offset_vertices
    xc = cameras.to_cameras(full.index_select(1, sub) @ rt + translation[:, None])  # (B, C, M, 3)
    ok, p, nd = patches.associate(cameras, xc, cameras.rotate(normals_sub @ rt), cfg.depth_gate_m,
                                  cfg.depth_min_normal_cos)
    res = (nd * (xc - p)).sum(-1)
    w = huber_weight(res.abs(), cfg.depth_huber_m) * (inv_d * ok)
    n_model = nd @ (cameras.r @ rotation[:, None])  # (B, C, M, 3)
    c = res - (n_model * offsets.index_select(1, sub)[:, None]).sum(-1)
    wn = w[..., None] * n_model
    h = full.new_zeros((b, 3, 3, n))
    g = full.new_zeros((b, 3, n))
    wn_t, nm_t = wn.transpose(-1, -2), n_model.transpose(-1, -2)  # (B, C, 3, M)
    h.index_copy_(3, sub, (wn_t[:, :, :, None] * nm_t[:, :, None]).sum(1))  # Σ_c w n nᵀ, (B, 3, 3, M)
    g.index_copy_(2, sub, (wn_t * c[:, :, None]).sum(1))
    has_data = ok.sum((1, 2)) > 0
    if raster is not None:
        h_r, g_r, has_r = offset_rows(raster, patches, cameras, rotation, translation, full, offsets,
                                      cfg.raster_weight * inv_d, cfg.depth_huber_m, cfg.depth_gate_m)
        h, g, has_data = h + h_r, g + g_r, has_data | has_r
    if raster is not None and color is not None:
        h_c, g_c, has_c = color_offset_rows(raster, color, cameras, rotation, translation, full, offsets,
                                            cfg.color_weight / cfg.color_sigma**2, cfg.color_huber, cfg.color_gate)
        h, g, has_data = h + h_c, g + g_c, has_data | has_c
    if cfg.offset_landmark_weight > 0:
        inv_lm = cfg.offset_landmark_weight / cfg.landmark_sigma_px**2
        vid = pack.lm_vertex
        uv, jp = project_pinhole_batch(cameras, full.index_select(1, vid) @ rt + translation[:, None])
        r_lm = uv - lm_target
        w_lm = lm_conf * huber_weight(torch.linalg.norm(r_lm, dim=-1), cfg.landmark_huber_px) * inv_lm  # (B, C, L)
        a = rows_times(jp, cameras.r @ rotation[:, None])  # (B, C, L, 2, 3) d uv / d offset (model frame)
        c_lm = r_lm - (a * offsets.index_select(1, vid)[:, None, :, None, :]).sum(-1)
        at = a.transpose(-1, -2)
        blocks = (w_lm[..., None, None] * small_matmul(at, a)).sum(1)  # (B, L, 3, 3)
        grads = (w_lm[..., None] * (at * c_lm[..., None, :]).sum(-1)).sum(1)  # (B, L, 3)
        h.index_add_(3, vid, blocks.permute(0, 2, 3, 1))
        g.index_add_(2, vid, grads.transpose(1, 2))
        has_data = has_data | (lm_conf.sum((1, 2)) > 0)
    start = offsets.transpose(1, 2).contiguous()
    solved = pack.regularizer.solve(h, g, cfg.offset_magnitude_weight * inv_d, cfg.offset_temporal_weight * inv_d,
                                    start, start, cfg.offset_cg_iterations)
    return torch.where(has_data[:, None, None], solved.transpose(1, 2), offsets)
