"""The fitter's building blocks: depth patches and association, the offset solver, rotations."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from mmface4d_stream.fit.camera_terms import FitCamera
from mmface4d_stream.fit.depth_term import CameraBatch, PatchBatch, box_sums
from mmface4d_stream.fit.frame_prep import PreparedCamera, collate_cameras, collate_crops, crop_depth, patch_radius
from mmface4d_stream.fit.landmark_term import project_pinhole_batch, rows_times
from mmface4d_stream.fit.model_pack import small_matmul
from mmface4d_stream.fit.geometry import orthonormalize_batch, so3_exp_batch, so3_log_batch
from mmface4d_stream.geometry import kabsch, so3_exp, so3_log
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


def _patches(cams: list[FitCamera], depths: list[np.ndarray], bbox, stride: int = 2):
    """One stream's CameraBatch and lifted PatchBatch (identity extrinsics), as the solver builds them."""
    prepared = [PreparedCamera(k, c, np.eye(3), np.zeros(3), np.zeros((1, 2)), np.zeros(1), 0, d)
                for k, (c, d) in enumerate(zip(cams, depths))]
    cameras, _, _ = collate_cameras([prepared], len(cams), "cpu")
    crops = [crop_depth(d, c, bbox, stride) for c, d in zip(cams, depths)]
    depth, grid, origin, size = collate_crops([prepared], [crops], len(cams), "cpu")
    return cameras, PatchBatch.lift(depth, grid, origin, size, stride, patch_radius(stride))


@pytest.mark.parametrize("distortion", [None, DIST])
def test_depth_patch_normals_and_association_on_a_plane(distortion):
    cam = FitCamera(600.0, 600.0, 319.5, 239.5, 640, 480, distortion)
    normal = np.array([0.3, -0.2, -1.0])
    normal /= np.linalg.norm(normal)
    point = np.array([0.0, 0.0, 0.7])
    depth = _plane_depth(cam, normal, point)
    cameras, patches = _patches([cam], [depth], (200, 150, 440, 330))
    w, h = (int(v) for v in patches.size[0, 0])
    assert (w, h) == (120, 90)
    assert int(patches.valid.sum()) > 0.9 * w * h
    n = patches.normals[patches.valid].numpy()
    # Normals face the camera (the plane's normal here points towards it) despite 1 mm quantization.
    assert np.median(n @ normal) > 0.999
    # Points on the plane, associated back to themselves.
    rng = np.random.default_rng(0)
    uv = np.stack([rng.uniform(230, 410, 100), rng.uniform(180, 300, 100)], 1)
    xy = cam.undistort(uv)
    rays = np.concatenate([xy, np.ones((100, 1))], 1)
    pts = torch.tensor(rays * ((normal @ point) / (rays @ normal))[:, None], dtype=torch.float32)[None, None]
    model_normals = torch.tensor(np.tile(normal, (1, 1, 100, 1)), dtype=torch.float32)
    ok, p, nd = patches.associate(cameras, pts, model_normals, 0.01, 0.5)
    assert bool(ok.all())
    # Point-to-plane residuals are at the quantization level.
    res = ((pts - p) * nd).sum(-1)
    assert float(res.abs().max()) < 1.5e-3
    # A point 3 cm behind the plane is gated out; a model normal facing away is rejected.
    ok_far, _, _ = patches.associate(cameras, pts * 1.05, model_normals, 0.01, 0.5)
    assert not bool(ok_far.any())
    ok_back, _, _ = patches.associate(cameras, pts, -model_normals, 0.01, 0.5)
    assert not bool(ok_back.any())


def test_patches_batch_cameras_like_separate_calls():
    cams = [FitCamera(600.0, 600.0, 319.5, 239.5, 640, 480, d) for d in (None, DIST)]
    normal = np.array([0.0, 0.0, -1.0])
    depths = [_plane_depth(c, normal, np.array([0, 0, 0.6])) for c in cams]
    pts = torch.tensor([[0.01, 0.02, 0.6], [-0.1, 0.05, 0.6], [0.3, 0.0, 0.6]], dtype=torch.float32)
    toward = torch.tensor([0.0, 0.0, -1.0]).expand(1, 2, 3, 3)
    cameras, both = _patches(cams, depths, (100, 100, 540, 380))
    ok2, p2, _ = both.associate(cameras, pts.expand(1, 2, 3, 3), toward, 0.01, 0.5)
    for k in range(2):
        cam1, one = _patches([cams[k]], [depths[k]], (100, 100, 540, 380))
        ok1, p1, _ = one.associate(cam1, pts[None, None], toward[:, :1], 0.01, 0.5)
        assert torch.equal(ok1[0, 0], ok2[0, k]) and torch.allclose(p1[0, 0], p2[0, k])
    assert ok2[0, :, :2].all() and not ok2[0, :, 2].any()  # (0.3, 0, 0.6) projects outside the crop


def test_lens_projection_matches_the_host_lens_model():
    cam = FitCamera(910.0, 905.0, 963.5, 537.5, 1920, 1080, DIST, max_radius=1.2)
    rng = np.random.default_rng(1)
    pts = np.stack([rng.uniform(-0.4, 0.4, 200), rng.uniform(-0.25, 0.25, 200), rng.uniform(0.5, 1.0, 200)], 1)
    cameras, _ = _patches([cam], [np.zeros((1080, 1920), np.uint16)], (0, 0, 64, 64))
    u, v = cameras.project(torch.tensor(pts, dtype=torch.float32)[None, None])
    xy = cam.distort(pts[:, :2] / pts[:, 2:3])
    expected = np.stack([xy[:, 0] * cam.fx + cam.cx, xy[:, 1] * cam.fy + cam.cy], 1)
    np.testing.assert_allclose(np.stack([u[0, 0].numpy(), v[0, 0].numpy()], 1), expected, atol=2e-3)


def test_project_pinhole_jacobian_matches_finite_differences():
    f64 = dict(dtype=torch.float64)
    cameras = CameraBatch(torch.eye(3, **f64)[None, None], torch.zeros(1, 1, 3, **f64),
                          torch.tensor([[[910.0, 905.0]]], **f64), torch.tensor([[[960.0, 540.0]]], **f64),
                          torch.zeros(1, 1, 8, **f64), torch.full((1, 1), 1e12, **f64))
    pts = torch.tensor([[[0.05, -0.03, 0.7], [-0.1, 0.08, 0.9]]], **f64)
    uv, j = project_pinhole_batch(cameras, pts)
    eps = 1e-7
    for c in range(3):
        d = torch.zeros(3, **f64)
        d[c] = eps
        num = (project_pinhole_batch(cameras, pts + d)[0] - project_pinhole_batch(cameras, pts - d)[0]) / (2 * eps)
        torch.testing.assert_close(j[..., c], num, atol=1e-3, rtol=1e-6)


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
        np.testing.assert_allclose(so3_exp_batch(torch.tensor(w)[None])[0].numpy(), r, atol=1e-12)
        if np.linalg.norm(w) < 3.0:
            np.testing.assert_allclose(so3_log_batch(torch.tensor(r)[None])[0].numpy(), w, atol=1e-9)
    tiny = torch.tensor([[1e-6, -2e-6, 5e-7]], dtype=torch.float64)  # the Taylor branch
    np.testing.assert_allclose(so3_exp_batch(tiny)[0].numpy(), so3_exp(tiny[0].numpy()), atol=1e-15)
    np.testing.assert_allclose(so3_log_batch(so3_exp_batch(tiny)).numpy(), tiny.numpy(), atol=1e-12)
    drifted = torch.tensor(so3_exp(np.array([0.2, 0.1, -0.3])) + 1e-4 * rng.normal(size=(3, 3)))[None]
    fixed = orthonormalize_batch(drifted)[0].numpy()
    np.testing.assert_allclose(fixed @ fixed.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(fixed, drifted[0].numpy(), atol=5e-4)
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


def test_lift_keeps_the_one_camera_that_sees_a_point_when_two_see_an_occluder():
    """A point hidden from two of three cameras: their landmark (exact in 2D, as MediaPipe places
    the far side of a face) lands on the surface in front, whose depth lifts it 40 mm too near, on
    the wrong ray for the other cameras. The lift is the visible camera's, not the occluded
    majority's (the median of the three lifts was an occluded one: the template's border
    collapsed onto the cheek)."""
    model = synthetic_face_model(n_vertices=1500, n_id=2, n_exp=2, seed=2)
    r, t = frontal_pose(5, 10, 0, (0.0, 0.01, 0.65))
    obs, gt = synthetic_frame(model, make_rig(3, distortion=DIST), r, t)
    det, vert = model.landmark_detector_index, model.landmark_vertex
    hidden = det[:12]  # hidden from cameras 1 and 2, seen by camera 0
    for c in (1, 2):
        co = obs.cameras[c]
        depth = co.depth_mm.copy()
        for u, v in np.round(co.landmarks_px[hidden]).astype(int):
            patch = depth[v - 3:v + 4, u - 3:u + 4]
            patch[patch > 0] -= 40  # the occluder: 40 mm nearer than the point
        obs.cameras[c] = replace(co, depth_mm=depth)
    points, valid, views = lift_landmarks(obs, n_points=60)
    err = np.linalg.norm(points[hidden] - gt[vert[:12]], axis=1)
    assert valid[hidden].all() and err.max() < 3e-3
    np.testing.assert_array_equal(views[hidden], 1)  # the occluded lifts are dropped
    seen = det[12:]
    assert np.median(views[seen]) == 3  # points every camera sees keep all three lifts


def test_raster_settings_are_checked_when_the_config_is_made():
    """A wrong raster mode or backend fails at configuration, naming the allowed values, not at the
    first frame that rasterizes."""
    from mmface4d_stream.fit.fitter_config import FitterConfig
    from mmface4d_stream.fit.raster import make_rasterizer

    with pytest.raises(ValueError, match=r"raster_backend must be one of \('auto', 'gl', 'nvdiffrast'\)"):
        FitterConfig(raster="depth", raster_backend="vulkan")
    with pytest.raises(ValueError, match="raster must be one of"):
        FitterConfig(raster="colour")
    with pytest.raises(ValueError, match="backend must be one of"):
        make_rasterizer(np.zeros((1, 3), np.int64), 3, backend="vulkan")


def test_box_sums_equal_a_direct_window_sum_exactly():
    """The summed-area table gives the zero-padded window sums of whole millimetres bit for bit,
    for any leading dimensions."""
    rng = np.random.default_rng(4)
    depth = torch.from_numpy(rng.integers(0, 4000, (2, 3, 37, 29)).astype(np.float32))
    depth[depth < 600] = 0  # holes
    for radius in (1, 4):
        k = 2 * radius + 1
        direct = torch.nn.functional.avg_pool2d(depth.flatten(0, 1)[:, None], k, stride=1, padding=radius,
                                                divisor_override=1)[:, 0].unflatten(0, (2, 3))
        assert torch.equal(box_sums(depth, radius), direct)


def test_tiny_matrix_products_match_matmul():
    rng = np.random.default_rng(5)
    a = torch.from_numpy(rng.normal(size=(2, 3, 7, 2, 3)))
    b = torch.from_numpy(rng.normal(size=(7, 3, 5)))
    torch.testing.assert_close(small_matmul(a, b), a @ b)
    rows = torch.from_numpy(rng.normal(size=(2, 3, 7, 2, 3)))
    per_camera = torch.from_numpy(rng.normal(size=(2, 3, 3, 3)))
    per_stream = torch.from_numpy(rng.normal(size=(2, 1, 3, 3)))
    torch.testing.assert_close(rows_times(rows, per_camera), rows @ per_camera[:, :, None])
    torch.testing.assert_close(rows_times(rows, per_stream), rows @ per_stream[:, :, None])
