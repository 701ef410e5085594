"""The rasterized depth term (`fit/raster_term.py`): its Jacobians against finite differences, the
term alone pulling a displaced mesh back onto a rendered surface, the fitter with `raster: depth`
(accuracy, no host reads inside the solve) and, marked `gpu`, the same on CUDA with nvdiffrast."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from mmface4d_stream.fit.depth_term import PatchBatch
from mmface4d_stream.fit.evaluate import point_to_surface_m
from mmface4d_stream.fit.fitter import FitterConfig
from mmface4d_stream.fit.frame_prep import choose_crops, collate_cameras, collate_crops, patch_radius, prepare_cameras
from mmface4d_stream.fit.model_pack import ModelPack
from mmface4d_stream.fit.raster import make_rasterizer, nvdiffrast_available
from mmface4d_stream.fit.raster_term import RasterTerm, RasterView, offset_rows, prepare_raster
from mmface4d_stream.fit.synthetic import frontal_pose, make_rig, synthetic_face_model, synthetic_frame
from mmface4d_stream.geometry import so3_exp

from raster_helpers import DISTORTION, nudged_state, reads_inside_the_next_solve, tracking_errors, tracking_frames

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def model():
    return synthetic_face_model(n_vertices=2500, n_id=6, n_exp=6, seed=2)


@pytest.fixture(scope="module")
def scene(model):
    """A frame of the model seen by 2 distorted cameras, its ground truth, and the solve's inputs
    (cameras, lifted depth patches, raster samples) for a starting mesh displaced from the truth."""
    rig = make_rig(2, distortion=DISTORTION)
    beta = np.linspace(-0.6, 0.6, model.n_exp).astype(np.float32)
    r, t = frontal_pose(6, -3, 1, (0.01, -0.01, 0.68))
    obs, gt = synthetic_frame(model, rig, r, t, None, beta)
    cfg = FitterConfig()
    pack = ModelPack.build(model, cfg, "cpu")
    cams = prepare_cameras(obs, model)
    # Start: 4 mm closer, 3 mm up, turned by ~1.5 degrees, no expression.
    r0 = so3_exp(np.array([0.015, -0.02, 0.01])) @ r
    t0 = t + np.array([0.0, -0.003, -0.004])
    start = model.vertices(None, None).astype(np.float64) @ r0.T + t0
    crops = choose_crops(cams, start[pack.samples_host], cfg.depth_stride, 0.2)
    cameras, _, _ = collate_cameras([cams], len(cams), "cpu")
    depth, grid, origin, size = collate_crops([cams], [crops], len(cams), "cpu", size_step=1)
    patches = PatchBatch.lift(depth, grid, origin, size, cfg.depth_stride, patch_radius(cfg.depth_stride))
    views = [[RasterView(c.camera, c.r_cam_from_ref, c.t_cam_from_ref, crop.depth_mm, crop.x0, crop.y0, cfg.depth_stride)
              for c, crop in zip(cams, crops)]]
    rasterizer = make_rasterizer(model.triangles, model.n_vertices, "gl")
    rb = prepare_raster(rasterizer, views, [start], len(cams), depth.shape[3], 800, 0.05, "cpu")
    return dict(obs=obs, gt=gt, pack=pack, cameras=cameras, patches=patches, rb=rb, cfg=cfg,
                start=(r0, t0), truth=(r, t, beta))


def _state(r, t, beta, n_id=0):
    f = dict(dtype=torch.float32)
    return (torch.as_tensor(r, **f)[None], torch.as_tensor(t, **f)[None], torch.zeros((1, n_id), **f),
            torch.as_tensor(beta, **f)[None])


def _term(scene, fit_identity=False):
    pack = scene["pack"]
    n = pack.n_vertices
    zeros = torch.zeros((1, n, 3))
    return RasterTerm(pack, scene["rb"], scene["patches"], pack.mean[None] + zeros, zeros, fit_identity)


def test_samples_cover_both_cameras(scene):
    valid = scene["rb"].valid[0]
    assert (valid.sum(-1) == 800).all()  # both cameras see enough of the face to fill M
    term = _term(scene)
    assert term.valid.sum() > 0.9 * 1600  # the lifted patches are valid at most samples (not at silhouettes)


def test_jacobian_matches_finite_differences(scene):
    """The analytic rows equal numerical derivatives of the residuals (rotation on the left)."""
    torch.set_default_dtype(torch.float64)
    try:
        term = _term(scene, fit_identity=True)
        term.mean, term.id, term.exp = term.mean.double(), term.id.double(), term.exp.double()
        term.vid, term.off = term.vid.double(), term.off.double()
        term.normal, term.target = term.normal.double(), term.target.double()
        cams = scene["cameras"]
        cams = type(cams)(**{k: getattr(cams, k).double() for k in ("r", "t", "focal", "centre", "dist", "r2_limit")})
        r0, t0 = scene["start"]
        pack = scene["pack"]
        rng = np.random.default_rng(0)
        state = (torch.as_tensor(r0)[None], torch.as_tensor(t0)[None],
                 torch.as_tensor(rng.normal(size=(1, pack.n_id)) * 0.3), torch.as_tensor(rng.normal(size=(1, pack.n_exp)) * 0.3))
        n_par = 6 + pack.n_id + pack.n_exp
        term.ok = term.valid
        res0, rp, g_ref = term.residuals(state, cams)
        # The analytic Jacobian J with weight 1: H = JᵀJ, g = Jᵀr. Recover J from its definition.
        nm = torch.einsum("bcmi,bij->bcmj", g_ref, state[0])
        from mmface4d_stream.fit.model_pack import cross3

        jac = torch.cat([cross3(rp, g_ref), g_ref, torch.einsum("bcmi,bcmik->bcmk", nm, term.id),
                         torch.einsum("bcmi,bcmik->bcmk", nm, term.exp)], -1).reshape(-1, n_par)
        cost, h, g = term.cost_and_rows(state, cams, 1.0, 1e9, n_par, True)
        ok = term.valid.reshape(-1)
        assert torch.allclose(h[0], (jac * ok[:, None]).T @ jac, rtol=1e-9, atol=1e-12)
        eps = 1e-6
        for p in range(n_par):
            num = (term.residuals(nudged_state(state, p, eps), cams)[0] - res0).reshape(-1) / eps
            err = (num - jac[:, p])[ok > 0].abs().max()
            assert err < 1e-5 * max(1.0, float(jac[:, p].abs().max())), (p, float(err))
    finally:
        torch.set_default_dtype(torch.float32)


def _surface_distance_mm(scene, model, vertices: torch.Tensor) -> float:
    """Mean distance (mm) of the face's central vertices to the true surface."""
    gt = scene["gt"]
    centre = np.linalg.norm(gt - gt.mean(0), axis=1) < 0.05
    d = point_to_surface_m(vertices.numpy()[centre], gt, model.triangles)
    return 1e3 * float(d.mean())


def test_depth_term_alone_pulls_a_displaced_mesh_back(scene, model):
    """Gauss-Newton on the pose and expression with the raster term as the only data term brings
    the displaced start onto the rendered surface."""
    pack, cams = scene["pack"], scene["cameras"]
    term = _term(scene)
    r0, t0 = scene["start"]
    state = _state(r0, t0, np.zeros(model.n_exp, np.float32))
    n_par = 6 + pack.n_exp

    def vertices(s):
        full = pack.mean + torch.einsum("nik,k->ni", pack.exp_basis, s[3][0])
        return full @ s[0][0].T + s[1][0]

    before = _surface_distance_mm(scene, model, vertices(state))
    for it in range(8):
        term.gate(state, cams, 0.02 if it < 3 else 0.01)
        _, h, g = term.cost_and_rows(state, cams, 1.0 / 0.002**2, 0.004, n_par, True)
        h = h + 1e-3 * torch.diag_embed(h.diagonal(dim1=1, dim2=2))
        delta = torch.linalg.solve(h, -g)[0].float()
        state = (torch.as_tensor(so3_exp(delta[:3].numpy()), dtype=torch.float32)[None] @ state[0],
                 state[1] + delta[3:6], state[2], state[3] + delta[6:])
    after = _surface_distance_mm(scene, model, vertices(state))
    assert before > 2.0, before
    assert after < 0.1, after  # depth is whole millimetres: 0.24 mm rms quantization per sample


def test_offset_rows_pull_vertices_onto_the_surface(scene):
    """At the true pose without the expression, one regularized step of the offset rows alone moves
    the raster samples onto the measured surface (point-to-plane residuals shrink)."""
    pack, cams = scene["pack"], scene["cameras"]
    r, t, _beta = scene["truth"]
    state = _state(r, t, np.zeros(pack.n_exp, np.float32))
    full = pack.mean[None].clone()
    offsets = torch.zeros_like(full)
    h, g, has = offset_rows(scene["rb"], scene["patches"], cams, state[0], state[1], full, offsets, 1.0, 1e9, 0.02)
    assert bool(has[0])
    blocks = h[0].permute(2, 0, 1)
    lam = 1e-3 * blocks.diagonal(dim1=1, dim2=2).sum(-1).max()
    step = torch.linalg.solve(blocks + lam * torch.eye(3), -g[0].T[..., None])[..., 0]

    def residual_mm(off):
        term = RasterTerm(pack, scene["rb"], scene["patches"], full, off[None], False)
        res = term.residuals(state, cams)[0]
        return 1e3 * float((res.abs() * term.valid).sum() / term.valid.sum())

    before, after = residual_mm(offsets[0]), residual_mm(step)
    assert before > 0.5, before
    assert after < 0.5 * before, (before, after)


def test_fitter_with_raster_depth_tracks_and_reads_nothing_inside_the_solve(model, monkeypatch):
    frames = tracking_frames(model, 2, 6)
    errors, fitter, slot = tracking_errors(model, frames[:5], ("off", "depth"))
    assert errors["depth"] < 0.6e-3, errors
    assert errors["depth"] < 1.5 * errors["off"], errors
    res, inside = reads_inside_the_next_solve(fitter, slot, frames[5][0], monkeypatch)
    assert "cold_start" not in res.flags
    assert inside == [{}], inside


@pytest.mark.gpu
@pytest.mark.skipif(not nvdiffrast_available(), reason="needs CUDA and nvdiffrast (pip install .[gpu])")
@pytest.mark.parametrize("mode, bound_m", [("depth", 0.6e-3), ("depth+color", 0.5e-3)])
def test_fitter_raster_terms_on_cuda_track_like_the_cpu(model, mode, bound_m):
    """The CUDA path: nvdiffrast rasterizes, the raster terms join the captured solve; it tracks like the CPU."""
    frames = tracking_frames(model, 2, 6, with_color=True)
    cpu = tracking_errors(model, frames, [mode])[0][mode]
    cuda, fitter, _ = tracking_errors(model, frames, [mode], device="cuda")
    assert next(iter(fitter._rasterizers.values()))[1].backend == "nvdiffrast"
    assert cuda[mode] < bound_m, (cuda, cpu)
    assert abs(cuda[mode] - cpu) < 0.1e-3, (cuda, cpu)
