"""Offscreen renderer: exact metric depth of analytic shapes through distorted Kinect-like cameras."""

from __future__ import annotations

import numpy as np
import pytest

from mmface4d_stream.k4a.camera_model import CameraModel
from mmface4d_stream.k4a.synthetic_calibration import synthetic_raw_calibration
from mmface4d_stream.render.mesh_ops import vertex_normals
from mmface4d_stream.render.renderer import MeshRenderer

# Typical Azure Kinect lenses (k4a-calib's synthetic device calibration) in two capture modes.
_CALIBRATION = synthetic_raw_calibration().calibration("720P", "NFOV_UNBINNED")
COLOR_720P = _CALIBRATION.color
DEPTH_NFOV_UNBINNED = _CALIBRATION.depth
CAMERAS = [COLOR_720P, DEPTH_NFOV_UNBINNED, CameraModel(320, 240, 300.0, 300.0, 159.5, 119.5)]


def grid_mesh(nx: int, ny: int, x_range, y_range):
    xs, ys = np.meshgrid(np.linspace(*x_range, nx), np.linspace(*y_range, ny))
    idx = np.arange(nx * ny).reshape(ny, nx)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    faces = np.concatenate([np.stack([a, b, c], 1), np.stack([b, d, c], 1)])
    return xs.ravel(), ys.ravel(), faces


def icosphere(level: int):
    t = (1 + 5**0.5) / 2
    v = [[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t], [0, -1, -t], [0, 1, -t],
         [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]]
    f = [[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2],
         [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5], [2, 4, 11],
         [6, 2, 10], [8, 6, 7], [9, 8, 1]]
    verts = [np.array(p, dtype=np.float64) / np.linalg.norm(p) for p in v]
    faces = f
    for _ in range(level):
        cache: dict[tuple[int, int], int] = {}

        def mid(i: int, j: int) -> int:
            key = (min(i, j), max(i, j))
            if key not in cache:
                m = verts[i] + verts[j]
                verts.append(m / np.linalg.norm(m))
                cache[key] = len(verts) - 1
            return cache[key]

        new = []
        for a, b, c in faces:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            new += [[a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca]]
        faces = new
    return np.array(verts), np.array(faces, dtype=np.int32)


@pytest.mark.parametrize("camera", CAMERAS, ids=["color720p", "depth_nfov", "pinhole"])
def test_tilted_plane_depth_within_half_mm(camera):
    x, y, faces = grid_mesh(40, 40, (-0.9, 0.9), (-0.8, 0.8))
    z = 0.9 + 0.35 * x - 0.2 * y
    vertices = np.stack([x, y, z], 1)
    with MeshRenderer(camera, faces, len(vertices)) as r:
        res = r.render(vertices, return_depth_m=True)
    rays = camera.ray_map().astype(np.float64)
    z_true = 0.9 / (1 - 0.35 * rays[..., 0] + 0.2 * rays[..., 1])
    inside = (np.abs(rays[..., 0] * z_true) < 0.85) & (np.abs(rays[..., 1] * z_true) < 0.75)
    assert inside.mean() > 0.5
    assert (res.depth_mm[inside] > 0).all()
    assert np.abs(res.depth_m[inside] - z_true[inside]).max() < 1e-5
    assert np.abs(res.depth_mm[inside] / 1000.0 - z_true[inside]).max() <= 0.5e-3 + 1e-6
    assert (res.depth_mm[~inside & (res.depth_m == 0)] == 0).all()


@pytest.mark.parametrize("camera", CAMERAS[:2], ids=["color720p", "depth_nfov"])
def test_sphere_depth_within_half_mm(camera):
    unit, faces = icosphere(5)
    center, radius = np.array([0.03, -0.02, 0.75]), 0.12
    with MeshRenderer(camera, faces, len(unit)) as r:
        res = r.render(center + radius * unit, return_depth_m=True)
    rays = np.concatenate([camera.ray_map().astype(np.float64), np.ones(res.depth_mm.shape + (1,))], -1)
    # Ray t * (x, y, 1) meets the sphere at the smaller root of |t r - c|^2 = R^2 (z = t).
    a = np.einsum("hwc,hwc->hw", rays, rays)
    b = -2 * rays @ center
    c = center @ center - radius**2
    disc = b * b - 4 * a * c
    hit = disc > 0
    z_true = np.where(hit, (-b - np.sqrt(np.where(hit, disc, 0))) / (2 * a), 0)
    # Away from the silhouette (incidence < 70 degrees), where the tessellation's polygon edge differs.
    p = rays * z_true[..., None]
    n = (p - center) / radius
    cos_inc = -np.einsum("hwc,hwc->hw", n, rays) / np.sqrt(a)
    well_inside = hit & (cos_inc > np.cos(np.radians(70)))
    assert well_inside.sum() > 1000
    err_mm = np.abs(res.depth_m[well_inside] - z_true[well_inside]) * 1000
    assert err_mm.max() < 0.1  # the level-5 tessellation lies within 0.02 mm of the sphere
    assert np.abs(res.depth_mm[well_inside] - z_true[well_inside] * 1000).max() <= 0.6
    assert (res.depth_mm[~hit] == 0).all()


def test_color_and_depth_aligned_and_projection_matches_camera():
    camera = COLOR_720P
    unit, sphere_faces = icosphere(4)
    center, radius = np.array([0.12, 0.05, 0.6]), 0.05
    x, y, plane_faces = grid_mesh(30, 30, (-0.6, 0.6), (-0.4, 0.4))
    plane = np.stack([x, y, np.full_like(x, 0.9)], 1)
    vertices = np.concatenate([center + radius * unit, plane])
    faces = np.concatenate([sphere_faces, plane_faces + len(unit)])
    colors = np.zeros((len(vertices), 3), np.uint8)
    colors[: len(unit)] = (255, 0, 0)
    colors[len(unit):] = (0, 0, 255)
    with MeshRenderer(camera, faces, len(vertices), colors=colors, shading="none") as r:
        res = r.render(vertices)
    red = (res.color[..., 0] > 128) & (res.color[..., 2] < 128)
    near = (res.depth_mm > 0) & (res.depth_mm < 800)
    assert red.sum() > 2000
    assert np.array_equal(red, near)
    # The silhouette is where the camera's own lens model says the rays meet the sphere.
    rays = np.concatenate([camera.ray_map().astype(np.float64), np.ones(red.shape + (1,))], -1)
    a = np.einsum("hwc,hwc->hw", rays, rays)
    b = -2 * rays @ center
    hit = b * b - 4 * a * (center @ center - radius**2) > 0
    assert (red != hit).sum() < 0.02 * hit.sum()
    vv, uu = np.nonzero(red)
    hv, hu = np.nonzero(hit)
    assert np.hypot(uu.mean() - hu.mean(), vv.mean() - hv.mean()) < 0.1


def test_shader_projection_matches_camera_model():
    # One tiny triangle per probe point: its rendered pixel must be where CameraModel.project puts it.
    for camera in CAMERAS[:2]:
        rng = np.random.default_rng(1)
        uv = rng.uniform([40, 40], [camera.width - 40, camera.height - 40], (25, 2))
        rays, valid = camera.unproject_to_rays(uv)
        assert valid.all()
        centres = rays * 0.8
        offsets = np.array([[-1, -1, 0], [1, -1, 0], [0, 1, 0]]) * 0.8 / camera.fx * 4.0
        vertices = (centres[:, None, :] + offsets[None]).reshape(-1, 3)
        faces = np.arange(len(vertices)).reshape(-1, 3)
        with MeshRenderer(camera, faces, len(vertices), shading="none") as r:
            res = r.render(vertices)
        # The rasterizer fills the triangle between the vertices' projections: pixel centres clearly
        # inside it (edge-normalized barycentrics > 0.05) are drawn, those clearly outside are not.
        corners = camera.project(vertices).pixels.reshape(-1, 3, 2)
        covered = res.depth_mm > 0
        v_grid, u_grid = np.mgrid[0 : camera.height, 0 : camera.width]
        decided = np.zeros_like(covered)
        for tri in corners:
            lo = np.floor(tri.min(0)).astype(int) - 2
            hi = np.ceil(tri.max(0)).astype(int) + 3
            uu = u_grid[lo[1] : hi[1], lo[0] : hi[0]]
            vv = v_grid[lo[1] : hi[1], lo[0] : hi[0]]
            bary = []
            for i in range(3):
                a, b, c = tri[i], tri[(i + 1) % 3], tri[(i + 2) % 3]
                # signed distance (pixels) of each pixel centre from edge a-b, positive towards c
                n = np.array([-(b - a)[1], (b - a)[0]]) / np.linalg.norm(b - a)
                if n @ (c - a) < 0:
                    n = -n
                bary.append((uu - a[0]) * n[0] + (vv - a[1]) * n[1])
            dist = np.min(bary, axis=0)
            patch = covered[lo[1] : hi[1], lo[0] : hi[0]]
            assert patch[dist > 0.05].all()
            assert not patch[dist < -0.05].any()
            decided[lo[1] : hi[1], lo[0] : hi[0]] = True
        assert not covered[~decided].any()


def test_texture_orientation_and_background():
    camera = CameraModel(200, 200, 200.0, 200.0, 99.5, 99.5)
    x, y, faces = grid_mesh(10, 10, (-0.1, 0.1), (-0.1, 0.1))
    vertices = np.stack([x, y, np.full_like(x, 0.5)], 1)
    # Image row 0 (top) is red, the bottom half green; v = 1 is the top of the image, y down in the camera.
    texture = np.zeros((64, 64, 3), np.uint8)
    texture[:32] = (255, 0, 0)
    texture[32:] = (0, 255, 0)
    uv = np.stack([(x + 0.1) / 0.2, 1 - (y + 0.1) / 0.2], 1)
    with MeshRenderer(camera, faces, len(vertices), uv=uv, texture=texture, shading="none", background=(7, 8, 9)) as r:
        res = r.render(vertices)
    assert tuple(res.color[70, 100]) == (255, 0, 0)
    assert tuple(res.color[130, 100]) == (0, 255, 0)
    assert tuple(res.color[2, 2]) == (7, 8, 9)
    assert res.depth_mm[2, 2] == 0 and res.depth_mm[100, 100] == 500


def test_pose_and_vertex_normals():
    camera = CameraModel(160, 120, 150.0, 150.0, 79.5, 59.5)
    x, y, faces = grid_mesh(8, 8, (-0.2, 0.2), (-0.2, 0.2))
    vertices = np.stack([x, y, np.zeros_like(x)], 1)
    n = vertex_normals(vertices, faces)
    assert np.allclose(np.abs(n[:, 2]), 1.0)
    T = np.eye(4)
    T[2, 3] = 1.25  # world origin 1.25 m in front of the camera
    with MeshRenderer(camera, faces, len(vertices)) as r:
        res = r.render(vertices, T_cam_from_world=T)
        assert res.depth_mm[60, 80] == 1250
        with pytest.raises(ValueError, match="vertices must be"):
            r.render(vertices[:5])
    with pytest.raises(ValueError, match="faces index"):
        MeshRenderer(camera, faces, 10)
