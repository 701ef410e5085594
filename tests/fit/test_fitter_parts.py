"""The fitter's building blocks: depth patches and association, the offset solver, rotations."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from mmface4d_stream.fit.camera_terms import FitCamera, PatchSet, make_depth_patch, project_pinhole
from mmface4d_stream.fit.geometry import kabsch, so3_exp, so3_exp_torch, so3_log
from mmface4d_stream.fit.regularizers import OffsetRegularizer, uniform_laplacian
from mmface4d_stream.fit.synthetic import frontal_pose, make_rig, synthetic_face_model, synthetic_frame
from mmface4d_stream.fit.template_lift import lift_landmarks

DIST = (0.5, -2.5, 1.5, 0.4, -2.3, 1.4, 1e-4, -2e-4)


def _plane_depth(cam: FitCamera, normal: np.ndarray, point: np.ndarray) -> np.ndarray:
    """uint16 mm depth of the plane n·(X - p) = 0 seen by `cam` (exact per pixel ray)."""
    rays = cam.ray_map("cpu").numpy().astype(np.float64)
    d = np.concatenate([rays, np.ones(rays.shape[:2] + (1,))], -1)
    z = (normal @ point) / (d @ normal)
    return np.round(z * 1000).astype(np.uint16)


@pytest.mark.parametrize("distortion", [None, DIST])
def test_depth_patch_normals_and_association_on_a_plane(distortion):
    cam = FitCamera(600.0, 600.0, 319.5, 239.5, 640, 480, distortion)
    normal = np.array([0.3, -0.2, -1.0])
    normal /= np.linalg.norm(normal)
    point = np.array([0.0, 0.0, 0.7])
    depth = _plane_depth(cam, normal, point)
    patch = make_depth_patch(depth, cam, (200, 150, 440, 330), "cpu", stride=2)
    assert patch.n_valid > 0.9 * patch.width * patch.height
    n = patch.normals[patch.valid].numpy()
    # Normals face the camera (the plane's normal here points towards it) despite 1 mm quantization.
    assert np.median(n @ normal) > 0.999
    # Points on the plane, associated back to themselves.
    rng = np.random.default_rng(0)
    uv = np.stack([rng.uniform(230, 410, 100), rng.uniform(180, 300, 100)], 1)
    xy = cam.undistort(uv)
    rays = np.concatenate([xy, np.ones((100, 1))], 1)
    pts = rays * ((normal @ point) / (rays @ normal))[:, None]
    r = torch.eye(3)[None]
    ps = PatchSet([cam], [patch], r, torch.zeros(1, 3))
    model_normals = torch.tensor(np.tile(normal, (100, 1)), dtype=torch.float32)[None]
    ok, p, nd = ps.associate(torch.tensor(pts, dtype=torch.float32)[None], model_normals, 0.01, 0.5)
    assert bool(ok.all())
    # Point-to-plane residuals are at the quantization level.
    res = ((torch.tensor(pts, dtype=torch.float32)[None] - p) * nd).sum(-1)
    assert float(res.abs().max()) < 1.5e-3
    # A point 3 cm behind the plane is gated out; a model normal facing away is rejected.
    ok_far, _, _ = ps.associate(torch.tensor(pts * 1.05, dtype=torch.float32)[None], model_normals, 0.01, 0.5)
    assert not bool(ok_far.any())
    ok_back, _, _ = ps.associate(torch.tensor(pts, dtype=torch.float32)[None], -model_normals, 0.01, 0.5)
    assert not bool(ok_back.any())


def test_patch_set_batches_cameras_like_separate_calls():
    cams = [FitCamera(600.0, 600.0, 319.5, 239.5, 640, 480, d) for d in (None, DIST)]
    normal = np.array([0.0, 0.0, -1.0])
    patches = [make_depth_patch(_plane_depth(c, normal, np.array([0, 0, 0.6])), c, (100, 100, 540, 380), "cpu", 2)
               for c in cams]
    pts = torch.tensor([[0.01, 0.02, 0.6], [-0.1, 0.05, 0.6], [0.3, 0.0, 0.6]], dtype=torch.float32)
    both = PatchSet(cams, patches, torch.eye(3).repeat(2, 1, 1), torch.zeros(2, 3))
    ok2, p2, _ = both.associate(pts.expand(2, 3, 3), None, 0.01, 0.5)
    for k in range(2):
        one = PatchSet([cams[k]], [patches[k]], torch.eye(3)[None], torch.zeros(1, 3))
        ok1, p1, _ = one.associate(pts[None], None, 0.01, 0.5)
        assert torch.equal(ok1[0], ok2[k]) and torch.allclose(p1[0][ok1[0]], p2[k][ok2[k]])
    assert ok2[:, :2].all() and not ok2[:, 2].any()  # (0.3, 0, 0.6) projects outside the crop


def test_project_pinhole_jacobian_matches_finite_differences():
    pts = torch.tensor([[0.05, -0.03, 0.7], [-0.1, 0.08, 0.9]], dtype=torch.float64)
    uv, j = project_pinhole(pts, 910.0, 905.0, 960.0, 540.0)
    eps = 1e-7
    for c in range(3):
        d = torch.zeros(3, dtype=torch.float64)
        d[c] = eps
        num = (project_pinhole(pts + d, 910.0, 905.0, 960.0, 540.0)[0] - project_pinhole(pts - d, 910.0, 905.0, 960.0, 540.0)[0]) / (2 * eps)
        torch.testing.assert_close(j[:, :, c], num, atol=1e-3, rtol=1e-6)


def test_offset_solver_converges_to_the_direct_solution():
    model = synthetic_face_model(n_vertices=400, n_id=1, n_exp=1)
    n = model.n_vertices
    reg = OffsetRegularizer(n, model.triangles, laplacian_weight=5.0, edge_weight=0.5, device="cpu")
    rng = np.random.default_rng(0)
    normals = rng.normal(size=(n, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    has = rng.random(n) < 0.7
    h = (normals[:, :, None] * normals[:, None, :]) * has[:, None, None]
    g = rng.normal(scale=0.01, size=(n, 3)) * has[:, None]
    prev = rng.normal(scale=0.001, size=(n, 3))
    w_mag, w_tmp = 0.01, 0.1
    # Direct solve of (blockdiag(H) + M ⊗ I3 + (w_mag + w_tmp) I) d = -g + w_tmp prev.
    lap, graph = uniform_laplacian(n, model.triangles)
    m = 5.0 * (lap.T @ lap) + 0.5 * graph
    big = sp.block_diag([sp.csr_matrix(b) for b in h]) + sp.kron(m, sp.eye(3)) + (w_mag + w_tmp) * sp.eye(3 * n)
    expected = spla.spsolve(big.tocsc(), (-g + w_tmp * prev).ravel()).reshape(n, 3)
    got = reg.solve(
        torch.tensor(h.transpose(1, 2, 0), dtype=torch.float32), torch.tensor(g.T, dtype=torch.float32),
        w_mag, w_tmp, torch.tensor(prev.T, dtype=torch.float32), torch.zeros(3, n), iterations=300,
    ).T.numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max())


def test_rotations_and_kabsch():
    rng = np.random.default_rng(1)
    for _ in range(5):
        w = rng.normal(size=3)
        w *= rng.uniform(0.01, 3.0) / np.linalg.norm(w)
        r = so3_exp(w)
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(so3_log(r), w, atol=1e-9)
        np.testing.assert_allclose(so3_exp_torch(torch.tensor(w)).numpy(), r, atol=1e-12)
    near_pi = so3_exp(np.array([0.0, np.pi - 1e-6, 0.0]))
    np.testing.assert_allclose(so3_exp(so3_log(near_pi)), near_pi, atol=1e-6)
    src = rng.normal(size=(20, 3))
    r, t = so3_exp(np.array([0.3, -0.2, 0.5])), np.array([0.1, -0.2, 0.7])
    r_est, t_est = kabsch(src, src @ r.T + t)
    np.testing.assert_allclose(r_est, r, atol=1e-12)
    np.testing.assert_allclose(t_est, t, atol=1e-12)
    with pytest.raises(ValueError, match="kabsch"):
        kabsch(src[:2], src[:2])


def test_lift_landmarks_with_depth_from_three_cameras():
    model = synthetic_face_model(n_vertices=1500, n_id=2, n_exp=2, seed=2)
    r, t = frontal_pose(5, 10, 0, (0.0, 0.01, 0.65))
    obs, gt = synthetic_frame(model, make_rig(3, distortion=DIST), r, t)
    # The synthetic detector has 60 points (below 468 the FaceMesh neighbourhood check is off).
    points, valid, views = lift_landmarks(obs, n_points=60)
    mapped = model.landmark_detector_index
    assert valid[mapped].mean() > 0.9
    err = np.linalg.norm(points[mapped] - gt[model.landmark_vertex], axis=1)[valid[mapped]]
    assert np.median(err) < 1e-3 and err.max() < 5e-3  # 1 mm depth steps, pixel-rounded lookups
    assert views[mapped].max() == 3 and np.isnan(points[~valid]).all()
