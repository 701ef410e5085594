"""The photometric term of `fitter.raster: depth+color` (`fit/color_term.py`): its Jacobian against
finite differences, the term alone bringing a displaced pose back onto a textured rendering, the
albedo estimate, and the fitter in that mode (tracking, no host reads inside the solve)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from mmface4d_stream.fit.color_term import AlbedoState, ColorTerm, color_windows, prepare_color
from mmface4d_stream.fit.depth_term import CameraBatch, PatchBatch
from mmface4d_stream.fit.fitter import FitterConfig
from mmface4d_stream.fit.frame_prep import choose_crops, collate_cameras, collate_crops, patch_radius, prepare_cameras
from mmface4d_stream.fit.model_pack import ModelPack, cross3
from mmface4d_stream.fit.multi import MultiStreamFitter
from mmface4d_stream.fit.raster import make_rasterizer
from mmface4d_stream.fit.raster_term import RasterTerm, RasterView, prepare_raster
from mmface4d_stream.fit.synthetic import frontal_pose, make_rig, synthetic_albedo, synthetic_face_model, synthetic_frame
from mmface4d_stream.geometry import so3_exp

from raster_helpers import DISTORTION, nudged_state, reads_inside_the_next_solve, tracking_errors, tracking_frames

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def model():
    return synthetic_face_model(n_vertices=2500, n_id=6, n_exp=6, seed=2)


def _prepared(model, pack, cfg, obs, start_ref, rasterizer, rig_n):
    cams = prepare_cameras(obs, model)
    crops = choose_crops(cams, start_ref[pack.samples_host], cfg.depth_stride, 0.2)
    cameras, _, _ = collate_cameras([cams], rig_n, "cpu")
    depth, grid, origin, size = collate_crops([cams], [crops], rig_n, "cpu", size_step=1)
    patches = PatchBatch.lift(depth, grid, origin, size, cfg.depth_stride, patch_radius(cfg.depth_stride))
    views = [[RasterView(c.camera, c.r_cam_from_ref, c.t_cam_from_ref, crop.depth_mm, crop.x0, crop.y0, cfg.depth_stride)
              for c, crop in zip(cams, crops)]]
    rb = prepare_raster(rasterizer, views, [start_ref], rig_n, depth.shape[3], 800, 0.05, "cpu")
    windows = [color_windows(obs, cams, crops, cfg.depth_stride)]
    return cameras, depth, origin, size, patches, rb, windows


def _textured_truth(model):
    """A textured frame of `model` seen by 2 distorted cameras, with what a solve needs around it:
    (cfg, pack, obs, gt vertices, rotation, translation, expression, GL rasterizer)."""
    cfg = FitterConfig(raster="depth+color")
    pack = ModelPack.build(model, cfg, "cpu")
    rig = make_rig(2, distortion=DISTORTION)
    beta = np.linspace(-0.6, 0.6, model.n_exp).astype(np.float32)
    r, t = frontal_pose(6, -3, 1, (0.01, -0.01, 0.68))
    obs, gt = synthetic_frame(model, rig, r, t, None, beta, with_color=True)
    return cfg, pack, obs, gt, r, t, beta, make_rasterizer(model.triangles, model.n_vertices, "gl")


@pytest.fixture(scope="module")
def scene(model):
    """A textured frame seen by 2 distorted cameras; the albedo learned from a previous frame at the
    truth; the solve's inputs for a start displaced from the truth."""
    cfg, pack, obs, gt, r, t, beta, rasterizer = _textured_truth(model)
    f32 = dict(dtype=torch.float32)
    full_true = torch.as_tensor(model.vertices(None, beta), **f32)[None]
    state = AlbedoState()
    # Frame "0" at the truth: its colour becomes the previous frame of the albedo update.
    inputs = _prepared(model, pack, cfg, obs, gt.astype(np.float64), rasterizer, 2)
    cameras, depth, origin, size, _, rb, windows = inputs
    rt = (torch.as_tensor(r, **f32)[None], torch.as_tensor(t, **f32)[None])
    prepare_color(pack, cfg, rb, windows, cameras, depth, origin, size, *rt, full_true, [True], [state], cfg.depth_stride)
    # The same frame again from the truth: the albedo is observed once, then the displaced start.
    prepare_color(pack, cfg, rb, windows, cameras, depth, origin, size, *rt, full_true, [True], [state], cfg.depth_stride)
    r0 = so3_exp(np.array([0.012, -0.015, 0.008])) @ r
    t0 = t + np.array([0.002, -0.0025, -0.001])
    start = model.vertices(None, beta).astype(np.float64) @ r0.T + t0
    cameras, depth, origin, size, patches, rb, windows = _prepared(model, pack, cfg, obs, start, rasterizer, 2)
    # The colour batch as the fitter prepares it from a start (albedo known; the start has the
    # true expression, only the pose is displaced: the shading basis comes from its normals).
    state.previous = None
    cb = prepare_color(pack, cfg, rb, windows, cameras, depth, origin, size, torch.as_tensor(r0, **f32)[None],
                       torch.as_tensor(t0, **f32)[None], full_true,
                       [True], [state], cfg.depth_stride)
    return dict(model=model, pack=pack, cfg=cfg, cameras=cameras, patches=patches, rb=rb, cb=cb, gt=gt,
                truth=(r, t, beta), start=(r0, t0), albedo=state)


def _color_term(scene, fit_identity=False):
    pack = scene["pack"]
    zeros = torch.zeros((1, pack.n_vertices, 3))
    raster = RasterTerm(pack, scene["rb"], scene["patches"], pack.mean[None] + zeros, zeros, fit_identity)
    return ColorTerm(raster, scene["cb"])


def test_albedo_is_learned_up_to_shading(scene, model):
    """Each camera's learned albedo of the vertices it sees follows the true one up to shading (the
    rendering's light is grey: the ratio to the truth is nearly the same in every channel)."""
    a = scene["albedo"].albedo.numpy()
    assert a.shape == (2, model.n_vertices, 3)
    true = synthetic_albedo(model)
    for k in range(2):
        seen = np.isfinite(a[k]).all(1)
        assert seen.mean() > 0.6
        ratio = a[k][seen] / true[seen]
        assert np.corrcoef(ratio[:, 0], ratio[:, 2])[0, 1] > 0.95
    assert scene["cb"].valid.sum() > 0.8 * scene["rb"].valid.sum()


def test_photometric_jacobian_matches_finite_differences(scene):
    torch.set_default_dtype(torch.float64)
    try:
        term = _color_term(scene, fit_identity=True)
        rt = term.raster
        for k in ("mean", "id", "exp", "vid", "off"):
            setattr(rt, k, getattr(rt, k).double())
        cb = scene["cb"]
        term.cb = replace(cb, images=cb.images.double(), origin=cb.origin.double(), size=cb.size.double(),
                          albedo=cb.albedo.double(), basis=cb.basis.double(), valid=cb.valid.double())
        cams = scene["cameras"]
        cams = CameraBatch(**{k: getattr(cams, k).double() for k in ("r", "t", "focal", "centre", "dist", "r2_limit")})
        pack = scene["pack"]
        r0, t0 = scene["start"]
        rng = np.random.default_rng(0)
        state = (torch.as_tensor(r0)[None], torch.as_tensor(t0)[None],
                 torch.as_tensor(rng.normal(size=(1, pack.n_id)) * 0.3), torch.as_tensor(rng.normal(size=(1, pack.n_exp)) * 0.3))
        n_par = 6 + pack.n_id + pack.n_exp
        term.gate(state, cams, 1e9)  # the shading and target ρ, then held fixed
        res0, inside, rp, g_ref = term.residuals(state, cams)
        nm = torch.einsum("bcmki,bij->bcmkj", g_ref, state[0])
        jac = torch.cat([cross3(rp[..., None, :].expand_as(g_ref), g_ref), g_ref,
                         torch.einsum("bcmxi,bcmik->bcmxk", nm, rt.id),
                         torch.einsum("bcmxi,bcmik->bcmxk", nm, rt.exp)], -1).reshape(-1, n_par)
        _, h, _ = term.cost_and_rows(state, cams, 1.0, 1e9, n_par, True)
        ok = (term.cb.valid * inside)[..., None].expand_as(res0).reshape(-1)
        assert torch.allclose(h[0], (jac * ok[:, None]).T @ jac, rtol=1e-9, atol=1e-12)
        eps = 1e-7  # far below a sample (bilinear cells): the interpolant is smooth inside one
        checked = 0
        for p in range(n_par):
            num = (term.residuals(nudged_state(state, p, eps), cams)[0] - res0).reshape(-1) / eps
            err = (num - jac[:, p]).abs()[ok > 0]
            scale = float(jac[:, p].abs().max())
            # A few rows cross a bilinear cell's edge within eps (the interpolant's kink): the median
            # and the 99th percentile hold the derivative.
            assert float(err.median()) < 1e-4 * scale, (p, float(err.median()), scale)
            assert float(err.quantile(0.99)) < 1e-2 * scale, (p, float(err.quantile(0.99)), scale)
            checked += int((ok > 0).sum())
        assert checked > 1000
    finally:
        torch.set_default_dtype(torch.float32)


def test_photometric_term_alone_brings_a_displaced_pose_back(scene):
    """Gauss-Newton on the pose with the colour rows as the only data term (expression at the truth):
    the displaced start returns to the true pose."""
    pack, cams, cfg = scene["pack"], scene["cameras"], scene["cfg"]
    r, t, beta = scene["truth"]
    r0, t0 = scene["start"]
    term = _color_term(scene)
    f32 = dict(dtype=torch.float32)
    state = (torch.as_tensor(r0, **f32)[None], torch.as_tensor(t0, **f32)[None], torch.zeros((1, 0)),
             torch.as_tensor(beta, **f32)[None])
    true_pts = (pack.mean + torch.einsum("nik,k->ni", pack.exp_basis, torch.as_tensor(beta))) @ torch.as_tensor(r, **f32).T \
        + torch.as_tensor(t, **f32)

    def error_mm(s):
        pts = (pack.mean + torch.einsum("nik,k->ni", pack.exp_basis, s[3][0])) @ s[0][0].T + s[1][0]
        return 1e3 * float(torch.linalg.norm(pts - true_pts, dim=1).mean())

    before = error_mm(state)
    inv = 1.0 / cfg.color_sigma**2
    for it in range(10):
        term.gate(state, cams, cfg.color_gate)
        _, h, g = term.cost_and_rows(state, cams, inv, cfg.color_huber, 6 + pack.n_exp, True)
        h, g = h[:, :6, :6], g[:, :6]
        h = h + 1e-3 * torch.diag_embed(h.diagonal(dim1=1, dim2=2))
        delta = torch.linalg.solve(h, -g)[0].float()
        state = (torch.as_tensor(so3_exp(delta[:3].numpy()), **f32)[None] @ state[0], state[1] + delta[3:6],
                 state[2], state[3])
    after = error_mm(state)
    assert before > 3.0, before
    assert after < 0.5, (before, after)


def test_fitter_with_depth_color_tracks_and_reads_nothing_inside_the_solve(model, monkeypatch):
    """The fitter in `depth+color` mode tracks a textured sequence (its albedo learned on the way) about
    as well as with the depth term alone, and its solve reads nothing back to the host."""
    frames = tracking_frames(model, 2, 7, with_color=True)
    errors, fitter, slot = tracking_errors(model, frames[:6], ("depth", "depth+color"))
    assert errors["depth+color"] < 0.5e-3, errors
    assert errors["depth+color"] < 2.5 * errors["depth"], errors
    assert fitter._streams[slot].albedo.updates == 5  # one observation per warm frame

    def has_colour(fb):
        assert fb.color is not None and float(fb.color.valid.sum()) > 500

    res, inside = reads_inside_the_next_solve(fitter, slot, frames[6][0], monkeypatch, check=has_colour)
    assert "cold_start" not in res.flags
    assert inside == [{}], inside


def test_depth_color_mode_without_colour_is_the_depth_mode(model):
    """Frames without `color_rgb` leave the photometric term empty: the same fit as `depth`."""
    rig = make_rig(2, distortion=DISTORTION)
    frames = [synthetic_frame(model, rig, *frontal_pose(2 * k, -3, 1, (0.01, -0.01, 0.67)), None, None,
                              frame_index=k) for k in range(3)]
    out = {}
    for mode in ("depth", "depth+color"):
        fitter = MultiStreamFitter(model, FitterConfig(raster=mode, identity_frames=2))
        slot = fitter.open_stream()
        out[mode] = [fitter.process({slot: obs})[slot].vertices for obs, _ in frames]
    assert max(np.abs(a - b).max() for a, b in zip(out["depth"], out["depth+color"])) < 1e-6


def test_the_albedo_update_fits_its_shading_on_a_subset_of_a_large_mesh(model, monkeypatch):
    """`observe_vertices` fits each camera's shading on every k-th vertex of a mesh larger than
    `SHADING_FIT_VERTICES` (five weights per channel): the learned albedo is that of the fit on all."""
    import mmface4d_stream.fit.color_term as color_term

    cfg, pack, obs, gt, r, t, beta, rasterizer = _textured_truth(model)
    cameras, depth, origin, size, _, rb, windows = _prepared(model, pack, cfg, obs, gt.astype(np.float64), rasterizer, 2)
    f32 = dict(dtype=torch.float32)
    rt = (torch.as_tensor(r, **f32)[None], torch.as_tensor(t, **f32)[None])
    full = torch.as_tensor(model.vertices(None, beta), **f32)[None]

    def learned(limit: int) -> np.ndarray:
        monkeypatch.setattr(color_term, "SHADING_FIT_VERTICES", limit)
        state = AlbedoState()
        for _ in range(3):  # the first observation defines the albedo; the later ones fit a shading
            prepare_color(pack, cfg, rb, windows, cameras, depth, origin, size, *rt, full, [True], [state], cfg.depth_stride)
        return state.albedo.numpy()

    every_vertex, subset = learned(10 ** 6), learned(model.n_vertices // 5)
    seen = np.isfinite(every_vertex).all(-1)
    assert seen.mean() > 0.6 and np.array_equal(seen, np.isfinite(subset).all(-1))
    assert np.abs(subset[seen] - every_vertex[seen]).max() < 0.02


def test_the_albedo_goes_with_a_checkpoint_and_fit_frame_leaves_it_alone(model):
    """`stream_state` carries the learned albedo (on the CPU): a fitter restored from it continues
    like the uninterrupted one; `fit_frame` (a fit outside the stream) does not move it."""
    frames = tracking_frames(model, 2, 6, with_color=True)
    cfg = FitterConfig(raster="depth+color", identity_frames=2)
    fitter = MultiStreamFitter(model, cfg)
    slot = fitter.open_stream()
    for obs, _ in frames[:4]:
        fitter.process({slot: obs})
    albedo = fitter._streams[slot].albedo
    before = (albedo.albedo.clone(), albedo.updates)
    fitter.fit_frame(slot, frames[4][0], fitter._streams[slot].last)
    after = fitter._streams[slot].albedo
    assert after.updates == before[1] and torch.allclose(after.albedo, before[0], rtol=0, atol=0, equal_nan=True)
    state = fitter.stream_state(slot)
    assert state["albedo"].updates == 3 and state["albedo"].previous is None
    resumed = MultiStreamFitter(model, cfg)
    resumed_slot = resumed.open_stream()
    resumed.restore_stream_state(resumed_slot, state)
    # The restored stream lacks the previous frame: the first frame after it only observes.
    for obs, _ in frames[4:]:
        straight = fitter.process({slot: obs})[slot]
        again = resumed.process({resumed_slot: obs})[resumed_slot]
    assert resumed._streams[resumed_slot].albedo.updates == 4
    assert np.abs(straight.vertices - again.vertices).max() < 2e-4
