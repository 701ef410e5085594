"""One frame of B independent streams: Levenberg-Marquardt on pose + coefficients, then offsets.

Unknowns per stream: the rigid pose (R, t) taking the model frame to the reference camera, the
identity coefficients α (only while `fit_identity`), the expression coefficients β; then the
per-vertex offsets D in one regularized step (`offsets.offset_step`).

    X_i = R (mean_i + B_id,i α + B_exp,i β + d_i) + t           reference frame, metres

Cost: Huber-robust landmark reprojection and point-to-plane depth terms (iteratively reweighted),
Gaussian priors on α and β, temporal priors on α, β and the pose against the frame's warm start.
Gauss-Newton with Levenberg-Marquardt damping (Marquardt 1963) on the small parameter vector,
analytic structured Jacobians, associations and robust weights refreshed at every iteration (ICP
style).

Everything a host `if` used to decide is decided per stream on the device: a fixed iteration
budget, a step accepted only where it lowers that stream's cost (masked update), the damping
raised or lowered per stream, and a stream that has converged kept frozen by its mask. The normal
equations are solved by `cholesky_ex` and two triangular solves (no pivoting, no error raised, no
allocation outside a CUDA graph's pool). Nothing is read back to the host inside `solve_frames`:
the frame can be captured once as a CUDA graph and replayed (`cuda_graph`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass, replace
from functools import partial

import torch

from mmface4d_stream.fit.depth_term import CameraBatch, PatchBatch, depth_rows
from mmface4d_stream.fit.geometry import orthonormalize_batch, so3_exp_batch, so3_log_batch
from mmface4d_stream.fit.landmark_term import (huber_cost, huber_weight, landmark_rows, normal_equations,
                                               project_pinhole_batch, rows_times)
from mmface4d_stream.fit.model_pack import ModelPack, apply_basis, cross3, small_matmul, vertex_normals
from mmface4d_stream.fit.offsets import offset_step
from mmface4d_stream.fit.raster_term import RasterBatch, RasterTerm
from mmface4d_stream.fit.color_term import ColorBatch, ColorTerm

__all__ = ["SolveSettings", "FrameBatch", "SolveOutput", "solve_frames", "tensor_fields"]


@dataclass(frozen=True)
class SolveSettings:
    """What shapes and unrolls one solve (part of a CUDA graph's key).

    iterations: LM iterations (a fixed budget).  widened_iterations: the first iterations of a cold
    start, whose associations use a 3x wider gate and which skip the convergence tests.
    fit_identity: α is a parameter.  stride: depth samples' pixel step.  radius: the depth
    patches' normal/window radius in samples.  chunk: streams per pass of the per-vertex and
    per-pixel work (patches, normals, offsets); None: the whole batch at once (GPU). On a CPU one
    stream at a time keeps each pass's arrays in cache (8 streams' (3, 3, N) offset blocks are
    ~10 MB), while the small per-parameter work stays batched.
    offsets: run the offset step (False: the frame's starting offsets are kept; hurried frames).
       early_exit: stop the LM loop once every stream has converged, at the price of up to two host
    reads per iteration (`active.any()`). Worth it on a CPU, where reading a flag costs nothing and
    the remaining iterations are real work; never in a captured CUDA graph (the results are the
    same either way: a converged stream's iterations are masked no-ops).
    """

    iterations: int
    widened_iterations: int
    fit_identity: bool
    stride: int
    radius: int
    chunk: int | None = None
    early_exit: bool = False
    offsets: bool = True


@dataclass
class FrameBatch:
    """The inputs of one solve: B streams x C cameras, padded to fixed shapes.

    Attributes:
        cameras: extrinsics and lens models (`CameraBatch`).
        lm_target: (B, C, L, 2) landmark targets, pinhole pixels (0 where unobserved).
        lm_conf: (B, C, L) confidences in [0, 1] (0: unobserved; a padded camera is all 0).
        depth_mm: (B, C, H, W) uint16 depth crops, millimetres, 0 = none (padding, no depth).
        ray_grid: (B, C, 2, Gv, Gu) each camera's undistortion grid (`camera_terms.undistortion_grid`).
        origin: (B, C, 2) crop top-left pixel (x0, y0).  size: (B, C, 2) long crop width, height in samples.
        rotation (B, 3, 3), translation (B, 3), alpha (B, K_id), beta (B, K_exp), offsets (B, N, 3):
            the start of the frame (the warm start, or a cold start's initial pose and zeros).
        v_id: (B, N, 3) mean + identity part of the model (used when α is not a parameter).
        normals_source: (B, N, 3) model-frame mesh whose normals gate visibility (the warm start's
            final vertices, or the cold start's initial shape).
        temporal: (B,) 1 where the temporal priors apply (warm start), 0 for cold starts.
        raster: the rasterized depth term's per-pixel samples (`raster_term.RasterBatch`), or None
            (`FitterConfig.raster` off).
        color: the photometric term's inputs on those samples (`color_term.ColorBatch`), or None
            (`FitterConfig.raster` not "depth+color").
    """

    cameras: CameraBatch
    lm_target: torch.Tensor
    lm_conf: torch.Tensor
    depth_mm: torch.Tensor
    ray_grid: torch.Tensor
    origin: torch.Tensor
    size: torch.Tensor
    rotation: torch.Tensor
    translation: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor
    offsets: torch.Tensor
    v_id: torch.Tensor
    normals_source: torch.Tensor
    temporal: torch.Tensor
    raster: RasterBatch | None = None
    color: ColorBatch | None = None


@dataclass
class SolveOutput:
    """The solved frame of B streams (device tensors).

    Attributes:
        rotation (B, 3, 3) orthonormal, translation (B, 3), alpha (B, K_id), beta (B, K_exp),
            offsets (B, N, 3): the final state.
        v_id: (B, N, 3) mean + identity part at the final α.  full: (B, N, 3) model-frame vertices.
        vertices: (B, N, 3) float32 metres in the reference frame.
        iterations: (B,) LM iterations run.  converged: (B,) 1 where a convergence test fired.
        lm_sq, lm_count: (B, C) sum of squared landmark errors (pixels²) and observed landmarks.
        depth_sq, depth_count: (B,) sum of squared point-to-plane distances (m²) and associated samples.
        camera_depth: (B, C) 1 where the camera contributed depth.
    """

    rotation: torch.Tensor
    translation: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor
    offsets: torch.Tensor
    v_id: torch.Tensor
    full: torch.Tensor
    vertices: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    lm_sq: torch.Tensor
    lm_count: torch.Tensor
    depth_sq: torch.Tensor
    depth_count: torch.Tensor
    camera_depth: torch.Tensor


def tensor_fields(obj) -> dict[str, torch.Tensor]:
    """The tensors of a FrameBatch / SolveOutput (and its CameraBatch), flattened by dotted name."""
    out = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, torch.Tensor):
            out[f.name] = value
        elif isinstance(value, (CameraBatch, RasterBatch, ColorBatch)):
            out.update({f"{f.name}.{k}": v for k, v in tensor_fields(value).items()})
    return out


class _Terms:
    """The cost terms of one solve, with everything that is fixed during the LM iterations."""

    def __init__(self, pack: ModelPack, config, fb: FrameBatch, settings: SolveSettings, patches: PatchBatch,
                 normals: torch.Tensor):
        cfg = config
        self.pack, self.cfg, self.fb, self.patches = pack, cfg, fb, patches
        self.fit_identity = settings.fit_identity and pack.n_id > 0
        self.n_id = pack.n_id if self.fit_identity else 0
        self.n_par = 6 + self.n_id + pack.n_exp
        self.inv_lm = 1.0 / cfg.landmark_sigma_px**2
        self.inv_d = 1.0 / cfg.depth_sigma_m**2
        self.fix_shape(fb.v_id, fb.offsets)
        self.s_normals = normals.index_select(1, pack.samples)
        tw = fb.temporal
        zeros = torch.zeros_like(tw)
        rot_w = tw / cfg.rotation_temporal_sigma**2
        trans_w = tw / cfg.translation_temporal_sigma**2
        self.id_temporal = cfg.id_temporal_weight * tw
        self.exp_temporal = cfg.exp_temporal_weight * tw
        self.rot_w, self.trans_w = rot_w, trans_w
        diag = [rot_w[:, None].expand(-1, 3), trans_w[:, None].expand(-1, 3)]
        if self.n_id:
            diag.append((cfg.id_prior_weight + self.id_temporal)[:, None].expand(-1, self.n_id))
        if pack.n_exp:
            diag.append((cfg.exp_prior_weight + self.exp_temporal + zeros)[:, None].expand(-1, pack.n_exp))
        self.prior_diag = torch.cat(diag, 1).to(torch.float64)
        # The rasterized depth term (fit/raster_term.py), None when off.
        self.raster = None if fb.raster is None else RasterTerm(pack, fb.raster, patches, fb.v_id, fb.offsets, self.fit_identity)
        self.inv_r = cfg.raster_weight * self.inv_d
        # The photometric term on the raster samples (fit/color_term.py), None unless depth+color.
        self.color = None if fb.color is None or self.raster is None else ColorTerm(self.raster, fb.color)
        self.inv_c = cfg.color_weight / cfg.color_sigma**2

    # -- model points ------------------------------------------------------------------------

    def fix_shape(self, v_id: torch.Tensor, offsets: torch.Tensor) -> None:
        """The parts of the model points that stay constant during the LM iterations: the offsets
        (B, N, 3) and, while α is not a parameter, the identity part v_id (B, N, 3), at the subsets."""
        pack = self.pack
        self.s_off, self.lm_off = offsets.index_select(1, pack.samples), offsets.index_select(1, pack.lm_vertex)
        self.s_vid, self.lm_vid = v_id.index_select(1, pack.samples), v_id.index_select(1, pack.lm_vertex)

    def points(self, state, which: str) -> torch.Tensor:
        """Model-frame points (B, V, 3) of `which` ("samples" or "landmarks") for a state."""
        _r, _t, alpha, beta = state
        pack = self.pack
        if which == "samples":
            base, id_b, exp_b, off = self.s_vid, pack.s_id64, pack.s_exp64, self.s_off
            mean = pack.s_mean
        else:
            base, id_b, exp_b, off = self.lm_vid, pack.lm_id64, pack.lm_exp64, self.lm_off
            mean = pack.lm_mean
        if self.fit_identity:
            base = mean + apply_basis(id_b, alpha)
        return base + apply_basis(exp_b, beta) + off

    def samples_in_cameras(self, state) -> tuple[torch.Tensor, torch.Tensor]:
        """The depth samples of a state: rotated into the reference frame (B, S, 3) and in each
        camera's frame (B, C, S, 3)."""
        r, t, _a, _b = state
        rp = self.points(state, "samples") @ r.transpose(-1, -2)
        return rp, self.fb.cameras.to_cameras(rp + t[:, None])

    def associate(self, state, gate_m: float, xc: torch.Tensor, dense: bool = True):
        """Associate the samples of a state, xc = `samples_in_cameras(state)[1]`, with the patches
        (and, when `dense`, re-gate the raster and colour terms for the iterations that follow)."""
        cams = self.fb.cameras
        normals_cam = cams.rotate(self.s_normals @ state[0].transpose(-1, -2))
        if dense and self.raster is not None:
            self.raster.gate(state, cams, gate_m)
        if dense and self.color is not None:
            self.color.gate(state, cams, self.cfg.color_gate)
        return self.patches.associate(cams, xc, normals_cam, gate_m, self.cfg.depth_min_normal_cos)

    # -- cost and normal equations -------------------------------------------------------------

    def evaluate(self, state, assoc, with_jac: bool, samples=None):
        """(H (B, P, P) float64, g (B, P) float64, cost (B,)) or, without the Jacobian, cost (B,).

        samples: `samples_in_cameras(state)` when the caller has it already.
        """
        cfg, pack, fb = self.cfg, self.pack, self.fb
        r, t, alpha, beta = state
        rt = r.transpose(-1, -2)
        cams = fb.cameras
        # Landmarks.
        rp = self.points(state, "landmarks") @ rt
        res, norm, jt = landmark_rows(cams, fb.lm_target, rp + t[:, None])
        # Costs are summed in float64: accept/converge decisions then do not depend on how a batch
        # pads its cameras (float32 sums in another order flip near-ties).
        cost = self.inv_lm * (fb.lm_conf * huber_cost(norm, cfg.landmark_huber_px)).to(torch.float64).sum((1, 2))
        if with_jac:
            w = fb.lm_conf * huber_weight(norm, cfg.landmark_huber_px) * self.inv_lm
            jw = cross3(rp[:, None, :, None, :], jt)  # -jt [rp]x, row by row
            parts = [jw, jt]
            a = rows_times(jt, r[:, None])  # d uv / d model point
            if self.n_id:
                parts.append(small_matmul(a, pack.lm_id))
            if pack.n_exp:
                parts.append(small_matmul(a, pack.lm_exp))
            # Normal equations accumulated in float64: batches padded differently (camera counts)
            # then round alike, so a stream's result does not depend on its batch.
            h, g = normal_equations(parts, w[..., None].expand_as(res), res, self.n_par)
        # Depth.
        rp, xc = self.samples_in_cameras(state) if samples is None else samples
        ok = assoc[0]
        res_d, jw_d, g_ref = depth_rows(assoc, cams, rp, xc)
        ar = res_d.abs()
        cost = cost + self.inv_d * (huber_cost(ar, cfg.depth_huber_m) * ok).to(torch.float64).sum((1, 2))
        if with_jac:
            w = huber_weight(ar, cfg.depth_huber_m) * (self.inv_d * ok)
            parts = [jw_d, g_ref]
            nm = g_ref @ r[:, None]  # normals in the model frame
            if self.n_id:
                parts.append(small_matmul(nm[..., None, :], pack.s_id)[..., 0, :])
            if pack.n_exp:
                parts.append(small_matmul(nm[..., None, :], pack.s_exp)[..., 0, :])
            h_d, g_d = normal_equations(parts, w, res_d, self.n_par)
            h, g = h + h_d, g + g_d
        if self.raster is not None:
            c_r, h_r, g_r = self.raster.cost_and_rows(state, cams, self.inv_r, cfg.depth_huber_m, self.n_par, with_jac)
            cost = cost + c_r
            if with_jac:
                h, g = h + h_r, g + g_r
        if self.color is not None:
            c_c, h_c, g_c = self.color.cost_and_rows(state, cams, self.inv_c, cfg.color_huber, self.n_par, with_jac)
            cost = cost + c_c
            if with_jac:
                h, g = h + h_c, g + g_c
        # Priors and temporal terms: diagonal.
        fb0 = self.fb
        w_rel = so3_log_batch(r @ fb0.rotation.transpose(-1, -2))
        d_t = t - fb0.translation
        cost = cost + (self.rot_w * (w_rel * w_rel).sum(-1) + self.trans_w * (d_t * d_t).sum(-1)).to(torch.float64)
        grads = [self.rot_w[:, None] * w_rel, self.trans_w[:, None] * d_t]
        if self.n_id:
            d_a = alpha - fb0.alpha
            cost = cost + (cfg.id_prior_weight * (alpha * alpha).sum(-1) + self.id_temporal * (d_a * d_a).sum(-1)).to(torch.float64)
            grads.append(cfg.id_prior_weight * alpha + self.id_temporal[:, None] * d_a)
        if pack.n_exp:
            d_b = beta - fb0.beta
            cost = cost + (cfg.exp_prior_weight * (beta * beta).sum(-1) + self.exp_temporal * (d_b * d_b).sum(-1)).to(torch.float64)
            grads.append(cfg.exp_prior_weight * beta + self.exp_temporal[:, None] * d_b)
        if not with_jac:
            return cost
        h = h + torch.diag_embed(self.prior_diag)
        g = g + torch.cat(grads, 1).to(torch.float64)
        return h, g, cost

    def step(self, state, delta: torch.Tensor):
        """The state moved by delta (B, P): rotation on the left, the rest additive."""
        r, t, alpha, beta = state
        n_id = self.n_id
        if n_id:
            alpha = alpha + delta[:, 6:6 + n_id]
        return so3_exp_batch(delta[:, :3]) @ r, t + delta[:, 3:6], alpha, beta + delta[:, 6 + n_id:]


def _select(mask: torch.Tensor, new, old):
    return tuple(torch.where(mask.reshape(-1, *([1] * (a.dim() - 1))), a, o) for a, o in zip(new, old))


def _cholesky_solve(a: torch.Tensor, rhs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve A x = rhs for SPD A (B, P, P), rhs (B, P): (x, ok (B,) bool), x = 0 where A is not PD."""
    chol, info = torch.linalg.cholesky_ex(a)
    y = torch.linalg.solve_triangular(chol, rhs[..., None], upper=False)
    x = torch.linalg.solve_triangular(chol.transpose(-1, -2), y, upper=True)[..., 0]
    ok = (info == 0) & torch.isfinite(x).all(-1)
    return torch.where(ok[:, None], x, torch.zeros_like(x)), ok


def _rows(obj, sl: slice):
    """A dataclass of per-stream tensors (CameraBatch, PatchBatch) restricted to the streams `sl`."""
    return replace(obj, **{f.name: getattr(obj, f.name)[sl] for f in fields(obj)
                           if isinstance(getattr(obj, f.name), torch.Tensor)})


def _chunked(fn, b: int, chunk: int | None, *args):
    """fn over slices of `chunk` streams of every tensor / dataclass argument, results concatenated."""
    if chunk is None or chunk >= b:
        return fn(*args)
    parts = []
    for start in range(0, b, chunk):
        sl = slice(start, start + chunk)
        parts.append(fn(*(a[sl] if isinstance(a, torch.Tensor) else _rows(a, sl) if is_dataclass(a) else a
                          for a in args)))
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    return replace(parts[0], **{f.name: torch.cat([getattr(p, f.name) for p in parts])
                                for f in fields(parts[0]) if isinstance(getattr(parts[0], f.name), torch.Tensor)})


def solve_frames(pack: ModelPack, config, fb: FrameBatch, settings: SolveSettings) -> SolveOutput:
    """Fit one frame of every stream in the batch (see the module docstring); no host reads."""
    cfg = config
    b = fb.rotation.shape[0]
    dev = fb.rotation.device
    chunk = settings.chunk
    patches = _chunked(partial(PatchBatch.lift, stride=settings.stride, radius=settings.radius), b, chunk,
                       fb.depth_mm, fb.ray_grid, fb.origin, fb.size)
    # Model normals only gate associations (visibility): the frame's starting mesh is close enough.
    normals = _chunked(partial(vertex_normals, triangles=pack.triangles), b, chunk, fb.normals_source)
    terms = _Terms(pack, cfg, fb, settings, patches, normals)
    state = (fb.rotation, fb.translation, fb.alpha, fb.beta)
    p = terms.n_par
    eye = torch.eye(p, dtype=torch.float64, device=dev)
    damping = torch.full((b,), cfg.initial_damping, dtype=torch.float64, device=dev)
    active = torch.ones(b, dtype=torch.bool, device=dev)
    converged = torch.zeros(b, dtype=torch.bool, device=dev)
    iterations = torch.zeros(b, dtype=torch.float32, device=dev)
    start_cost = torch.full((b,), float("inf"), dtype=torch.float64, device=dev)
    tol = cfg.step_tolerance
    for it in range(settings.iterations):
        widened = it < settings.widened_iterations
        samples = terms.samples_in_cameras(state)
        assoc = terms.associate(state, cfg.depth_gate_m * (3.0 if widened else 1.0), samples[1])
        h, g, cost = terms.evaluate(state, assoc, with_jac=True, samples=samples)
        if not widened:
            # Re-association gave back what the last step gained: the ICP-style limit cycle of
            # discrete pixel associations around the optimum.
            cycled = active & (cost > (1 - cfg.cost_tolerance) * start_cost)
            converged = converged | cycled
            active = active & ~cycled
            start_cost = torch.where(active, cost, start_cost)
            if settings.early_exit and not bool(active.any()):
                break
        a = h + damping[:, None, None] * torch.diag_embed(torch.diagonal(h, dim1=1, dim2=2).clamp_min(1e-9)) + 1e-9 * eye
        delta, solved = _cholesky_solve(a, -g)
        delta = delta.to(fb.rotation.dtype)
        candidate = terms.step(state, delta)
        new_cost = terms.evaluate(candidate, assoc, with_jac=False)
        accept = active & solved & (new_cost <= cost)
        iterations = iterations + active.to(iterations.dtype)
        state = _select(accept, candidate, state)
        damping = torch.where(accept, (damping / 3).clamp_min(1e-7), torch.where(active, damping * 8, damping))
        if not widened:
            d = delta.abs()
            small = (d[:, :3].amax(1) < tol) & (d[:, 3:6].amax(1) < 0.1 * tol)
            if p > 6:
                small = small & (d[:, 6:].amax(1) < 10 * tol)
            done = accept & ((cost - new_cost < cfg.cost_tolerance * cost) | small)
            converged = converged | done
            active = active & ~done
        if settings.early_exit and not bool(active.any()):
            break
    r, t, alpha, beta = state
    v_id = pack.identity_shape(alpha) if terms.fit_identity else fb.v_id
    full = pack.shape(v_id, beta, fb.offsets)
    offsets = fb.offsets
    if pack.regularizer is not None and settings.offsets:
        offsets = _chunked(partial(offset_step, pack, cfg), b, chunk, fb.cameras, patches, r, t, full, fb.offsets,
                           normals.index_select(1, pack.offset_vertices), fb.lm_target, fb.lm_conf, fb.raster, fb.color)
        full = full - fb.offsets + offsets
    r = orthonormalize_batch(r)
    vertices = full @ r.transpose(-1, -2) + t[:, None]
    # Residual figures of the final state (read once by the caller, with the mesh).
    final = (r, t, alpha, beta)
    terms.fit_identity = False
    terms.fix_shape(v_id, offsets)
    uv, _ = project_pinhole_batch(fb.cameras, terms.points(final, "landmarks") @ r.transpose(-1, -2) + t[:, None])
    seen = (fb.lm_conf > 0).to(uv.dtype)
    lm_sq = (((uv - fb.lm_target) ** 2).sum(-1) * seen).sum(-1)
    _, xc = terms.samples_in_cameras(final)
    ok, tp, tn = terms.associate(final, cfg.depth_gate_m, xc, dense=False)  # (no iteration follows)
    res = (tn * (xc - tp)).sum(-1) * ok
    return SolveOutput(
        rotation=r, translation=t, alpha=alpha, beta=beta, offsets=offsets, v_id=v_id, full=full,
        vertices=vertices, iterations=iterations, converged=converged.to(iterations.dtype),
        lm_sq=lm_sq, lm_count=seen.sum(-1), depth_sq=(res * res).sum((1, 2)), depth_count=ok.sum((1, 2)),
        camera_depth=patches.camera_ok.to(iterations.dtype),
    )
