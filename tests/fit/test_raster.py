"""Rasterized building blocks: the GL backend against an independent numpy rasterizer, depth on a
tilted plane through a distorted Kinect lens, crops and batches, gradients of the interpolation,
and (marked `gpu`) the nvdiffrast backend against the GL one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmface4d_stream.fit.camera_terms import FitCamera
from mmface4d_stream.fit.raster import (
    GLRasterizer,
    clip_coordinates,
    crop_rays,
    interpolate,
    make_rasterizer,
    model_depth,
    nvdiffrast_available,
    ray_plane_depth,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")

# A Kinect-like colour lens (strong rational distortion, as the fitter tests' rigs use).
KINECT = FitCamera(610.0, 609.0, 638.3, 364.1, 1280, 720, (0.5, -2.5, 1.5, 0.4, -2.3, 1.4, 1e-4, -2e-4), 1.7)
PINHOLE = FitCamera(300.0, 300.0, 159.5, 119.5, 320, 240)


def grid(nx: int, ny: int, x_range, y_range):
    xs, ys = np.meshgrid(np.linspace(*x_range, nx), np.linspace(*y_range, ny))
    idx = np.arange(nx * ny).reshape(ny, nx)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    return xs.ravel(), ys.ravel(), np.concatenate([np.stack([a, b, c], 1), np.stack([b, d, c], 1)])


def bumpy_scene(offset=(0.0, 0.0), z0=0.7):
    """A wavy 12x10 sheet with a smaller sheet in front of part of it (occlusion), metres:
    vertices 0..24 and triangles 0..31 are the front sheet."""
    x, y, f = grid(12, 10, (-0.05, 0.05), (-0.04, 0.04))
    z = z0 + 0.2 * x - 0.1 * y + 0.006 * np.sin(60 * x) * np.cos(50 * y)
    back = np.stack([x + offset[0], y + offset[1], z], 1)
    x2, y2, f2 = grid(5, 5, (-0.015, 0.02), (-0.02, 0.01))
    front = np.stack([x2 + offset[0], y2 + offset[1], z0 - 0.03 + 0.1 * x2], 1)
    # The front sheet comes first, so that drawing order alone would let the back one win.
    verts = np.concatenate([front, back]).astype(np.float32)
    return verts, np.concatenate([f2, f + len(front)]).astype(np.int64)


def crop_around(camera: FitCamera, verts: np.ndarray, margin: int = 4):
    uv = camera.project_torch(torch.as_tensor(verts, dtype=torch.float64)).numpy()
    x0, y0 = (np.floor(uv.min(0)).astype(int) - margin).tolist()
    x1, y1 = (np.ceil(uv.max(0)).astype(int) + margin).tolist()
    return [x0, y0, x1 - x0, y1 - y0]


def reference_raster(camera: FitCamera, verts: np.ndarray, faces: np.ndarray, crop, H: int, W: int):
    """Brute force in float64: every pixel centre against every triangle, edge functions on the
    distorted vertex projections, perspective-correct barycentrics, nearest 1/z wins."""
    x0, y0 = crop[0], crop[1]
    v = np.asarray(verts, np.float64)
    q = camera.distort(v[:, :2] / v[:, 2:]) * [camera.fx, camera.fy] + [camera.cx, camera.cy]
    jj, ii = np.meshgrid(np.arange(W), np.arange(H))
    px = np.stack([jj + x0, ii + y0], -1).reshape(-1, 1, 2).astype(np.float64)  # (P, 1, 2)
    a, b, c = q[faces[:, 0]], q[faces[:, 1]], q[faces[:, 2]]  # (F, 2)

    def edge(p, s, t):
        return (t[..., 0] - s[..., 0]) * (p[..., 1] - s[..., 1]) - (t[..., 1] - s[..., 1]) * (p[..., 0] - s[..., 0])

    area = edge(c, a, b)  # (F,)
    l0 = edge(px, b, c) / area
    l1 = edge(px, c, a) / area
    l2 = 1 - l0 - l1
    inside = (l0 >= 0) & (l1 >= 0) & (l2 >= 0) & (np.abs(area) > 1e-12)
    z = v[:, 2]
    w0, w1, w2 = l0 / z[faces[:, 0]], l1 / z[faces[:, 1]], l2 / z[faces[:, 2]]
    inv_z = np.where(inside, w0 + w1 + w2, -np.inf)
    best = inv_z.argmax(1)
    hit = np.isfinite(inv_z.max(1))
    rows = np.arange(len(best))
    s = (w0 + w1 + w2)[rows, best]
    bary = np.stack([w0[rows, best] / s, w1[rows, best] / s], -1)
    ids = np.where(hit, best, -1).reshape(H, W)
    inside_img = ((px[:, 0, 0] >= 0) & (px[:, 0, 0] < camera.width) & (px[:, 0, 1] >= 0)
                  & (px[:, 0, 1] < camera.height)).reshape(H, W)
    ids[~inside_img] = -1
    edge_margin = np.minimum(np.minimum(l0, l1), l2).reshape(H, W, -1)  # < 0: outside by that much
    return ids, np.where(ids[..., None] >= 0, bary.reshape(H, W, 2), 0.0), edge_margin


def id_agreement(ids: np.ndarray, ref: np.ndarray) -> float:
    covered = (ids >= 0) | (ref >= 0)
    return float((ids[covered] == ref[covered]).mean())


@pytest.mark.parametrize("camera", [KINECT, PINHOLE], ids=["kinect", "pinhole"])
def test_gl_ids_and_barycentrics_match_reference(camera):
    scenes = [bumpy_scene((0.12, 0.08)), bumpy_scene((-0.03, 0.02), z0=0.65)]
    verts = np.stack([s[0] for s in scenes])
    faces = scenes[0][1]
    crops = [crop_around(camera, verts[b]) for b in range(2)]
    raster = GLRasterizer(faces, verts.shape[1]).rasterize(torch.as_tensor(verts), camera, crops)
    H, W = raster.tri_ids.shape[1:]
    assert H == max(c[3] for c in crops) and W == max(c[2] for c in crops)
    for b in range(2):
        ref_ids, ref_bary, margin = reference_raster(camera, verts[b], faces, crops[b], H, W)
        ids = raster.tri_ids[b].numpy()
        ref_ids[crops[b][3]:] = -1
        ref_ids[:, crops[b][2]:] = -1
        assert (ref_ids >= 0).sum() > 500
        assert id_agreement(ids, ref_ids) >= 0.99
        # Every disagreement is a pixel centre within 1 % of a barycentric unit of an edge (ties on
        # shared edges, silhouettes): GL's triangle, or the reference's, barely covers it.
        ii, jj = np.nonzero(ids != ref_ids)
        def near(t):
            return (t >= 0) & (np.abs(margin[ii, jj, np.maximum(t, 0)]) < 0.01)

        near_edge = near(ids[ii, jj]) | near(ref_ids[ii, jj])
        assert near_edge.all(), list(zip(ii[~near_edge], jj[~near_edge]))
        same = (ids >= 0) & (ids == ref_ids)
        err = np.abs(raster.barycentrics[b].numpy()[same] - ref_bary[same])
        assert err.max() < 2e-3, err.max()
        # The small front sheet occludes the back one where both project.
        assert ((ids >= 0) & (ids < 32)).sum() > 50


def test_tilted_plane_depth_through_kinect_lens():
    # A plane near the image's corner, where the lens distorts most.
    x, y, faces = grid(10, 10, (0.22, 0.34), (0.13, 0.22))
    z = 0.7 + 0.3 * x - 0.2 * y
    verts = torch.as_tensor(np.stack([x, y, z], 1), dtype=torch.float32)[None]
    crop = crop_around(KINECT, verts[0].numpy())
    raster = GLRasterizer(faces, verts.shape[1]).rasterize(verts, KINECT, [crop])
    rays = crop_rays([KINECT], [crop], *raster.tri_ids.shape[1:]).double()
    # The true depth of the plane z = 0.7 + 0.3 X - 0.2 Y along each pixel's exact ray (x, y, 1)·z.
    true_z = 0.7 / (1 - 0.3 * rays[..., 0] + 0.2 * rays[..., 1])
    inner = raster.mask.clone()
    inner[:, :, :1] = inner[:, :, -1:] = False
    assert inner.sum() > 1000
    interp = model_depth(verts.double(), raster, faces)
    assert torch.equal(interp.mask, raster.mask)
    assert (interp.values - true_z).abs()[inner].max() < 0.5e-3
    exact = ray_plane_depth(verts.double(), raster, faces, rays)
    assert (exact.values - true_z).abs()[inner & exact.mask].max() < 0.01e-3
    assert (interp.values[~raster.mask] == 0).all()


def test_crop_offsets_padding_and_image_border(monkeypatch):
    verts, faces = bumpy_scene((0.0, 0.0))
    crop = crop_around(PINHOLE, verts)
    r = GLRasterizer(faces, len(verts))
    v = torch.as_tensor(verts)[None]
    base = r.rasterize(v, PINHOLE, [crop]).tri_ids[0]
    # The same view through a crop shifted by (5, 3) and a smaller one padded to the same size.
    shifted = [crop[0] + 5, crop[1] + 3, crop[2], crop[3]]
    small = [crop[0], crop[1], crop[2] // 2, crop[3] // 2]
    out = r.rasterize(v.expand(3, -1, -1), PINHOLE, [crop, shifted, small])
    assert torch.equal(out.tri_ids[0], base)
    a, s = base[3:, 5:], out.tri_ids[1][:-3, :-5]
    assert (a == s).float().mean() > 0.999
    assert (out.tri_ids[1][-3:] == -1).all() or (base[-3:] == -1).all()
    sm = out.tri_ids[2]
    assert (sm[crop[3] // 2:] == -1).all() and (sm[:, crop[2] // 2:] == -1).all()
    assert torch.equal(sm[:crop[3] // 2, :crop[2] // 2], base[:crop[3] // 2, :crop[2] // 2])
    assert (out.barycentrics[2][sm < 0] == 0).all()
    # Views split over several framebuffer passes give the same result.
    import mmface4d_stream.render.raster_ids as raster_ids

    monkeypatch.setattr(raster_ids, "_MAX_ROWS", 2 * crop[3])
    split = GLRasterizer(faces, len(verts)).rasterize(v.expand(3, -1, -1), PINHOLE, [crop, shifted, small])
    assert torch.equal(split.tri_ids, out.tri_ids)
    assert (split.barycentrics - out.barycentrics).abs().max() < 1e-5  # float rounding of window rows
    # A crop reaching past the image's left/top edge: those pixels are background.
    edge = [-10, -6, 40, 30]
    shift = torch.as_tensor([-0.36, -0.27, 0.0])  # the sheet's centre to pixel (5, 5): over the corner
    e = r.rasterize(v + shift, PINHOLE, [edge]).tri_ids[0]
    assert (e[:6] == -1).all() and (e[:, :10] == -1).all()
    assert (e[6:, 10:] >= 0).sum() > 50


@pytest.mark.parametrize("stride", [2, 3])
def test_strided_raster_samples_the_full_resolution_one(stride):
    """A raster at stride s (a viewport s times smaller, the same camera) gives the samples of the
    full-resolution raster at [::s, ::s]: the same triangles nearly everywhere, and the same
    interpolated depth within 0.5 mm where they agree (and where they do not: a neighbour
    triangle at an edge). The nvdiffrast path's clip coordinates map the strided pixels alike."""
    verts, faces = bumpy_scene((0.02, -0.01))
    crop = crop_around(KINECT, verts)
    r = GLRasterizer(faces, len(verts))
    v = torch.as_tensor(verts, dtype=torch.float64)[None]
    full = r.rasterize(v, KINECT, [crop])
    strided = r.rasterize(v, KINECT, [crop], stride=stride)
    h, w = -(-crop[3] // stride), -(-crop[2] // stride)
    assert strided.tri_ids.shape == (1, h, w) and strided.stride == stride
    sub_ids = full.tri_ids[:, ::stride, ::stride]
    assert sub_ids.shape == strided.tri_ids.shape
    both = (sub_ids >= 0) & (strided.tri_ids >= 0)
    assert (sub_ids == strided.tri_ids).float().mean() > 0.99
    assert both.sum() > 200
    z_full = model_depth(v, full, faces).values[:, ::stride, ::stride]
    z_strided = model_depth(v, strided, faces).values
    assert (z_full - z_strided).abs()[both].max() < 0.5e-3
    clip = clip_coordinates(v, [KINECT], [crop], h, w, stride=stride)[0].double()
    uv = KINECT.project_torch(v[0])
    ndc = clip[:, :2] / clip[:, 3:]
    expect = torch.stack([(uv[:, 0] - crop[0]) / stride + 0.5, (uv[:, 1] - crop[1]) / stride + 0.5], 1)
    assert ((ndc + 1) / 2 * torch.tensor([w, h], dtype=torch.float64) - expect).abs().max() < 1e-4


def test_clip_coordinates_map_pixels_to_crop_ndc():
    """The nvdiffrast path's geometry (on the CPU): raw pixel (x0 + j, y0 + i) sits at NDC
    ((j + 0.5) / W·2 - 1, (i + 0.5) / H·2 - 1) after the perspective divide, and w = z."""
    verts, _ = bumpy_scene((0.1, 0.05))
    v = torch.as_tensor(verts, dtype=torch.float64)
    crop = [700, 380, 90, 70]
    clip = clip_coordinates(v[None], [KINECT], [crop], 70, 90)[0].double()
    uv = KINECT.project_torch(v)
    ndc = clip[:, :2] / clip[:, 3:]
    expect = torch.stack([(uv[:, 0] - 700 + 0.5) / 90 * 2 - 1, (uv[:, 1] - 380 + 0.5) / 70 * 2 - 1], 1)
    assert (ndc - expect).abs().max() < 1e-5
    assert torch.allclose(clip[:, 3], v[:, 2].double(), atol=1e-6)
    zc = clip[:, 2] / clip[:, 3]
    assert ((zc > -1) & (zc < 1)).all()


def test_interpolate_values_and_broadcast():
    verts, faces = bumpy_scene()
    crop = crop_around(PINHOLE, verts)
    raster = GLRasterizer(faces, len(verts)).rasterize(torch.as_tensor(verts), PINHOLE, [crop])
    ones = torch.ones(len(verts), 2, dtype=torch.float64)
    got = interpolate(ones, raster.tri_ids, raster.barycentrics, faces)
    assert got.values.shape == (1, *raster.tri_ids.shape[1:], 2)
    assert torch.allclose(got.values[got.mask], torch.ones(1, dtype=torch.float64), atol=1e-6)
    assert (got.values[~got.mask] == 0).all()
    # Interpolating the camera-frame positions lands on each pixel's (linearized) ray.
    pts = interpolate(torch.as_tensor(verts, dtype=torch.float64)[None], raster.tri_ids, raster.barycentrics, faces)
    m = pts.mask[0]
    uv = PINHOLE.project_torch(pts.values[0][m])
    ii, jj = torch.nonzero(m, as_tuple=True)
    assert (uv[:, 0] - (jj + crop[0])).abs().max() < 1e-2
    assert (uv[:, 1] - (ii + crop[1])).abs().max() < 1e-2


def test_interpolation_gradients_match_finite_differences():
    verts, faces = bumpy_scene()
    verts = verts[25:]  # the back sheet alone
    faces = faces[32:] - 25
    crop = crop_around(PINHOLE, verts)
    crop = [crop[0] + crop[2] // 2 - 6, crop[1] + crop[3] // 2 - 5, 12, 10]  # a small window
    raster = GLRasterizer(faces, len(verts)).rasterize(torch.as_tensor(verts), PINHOLE, [crop])
    assert raster.mask.all()
    ids, bary = raster.tri_ids, raster.barycentrics.double().requires_grad_(True)
    attr = torch.randn(1, len(verts), 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: interpolate(a, ids, b, faces).values, (attr, bary))
    v = torch.as_tensor(verts, dtype=torch.float64)[None].requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: model_depth(x, raster, faces).values, (v,))
    rays = crop_rays([PINHOLE], [crop], 10, 12).double()
    assert torch.autograd.gradcheck(lambda x: ray_plane_depth(x, raster, faces, rays).values, (v,))
    # Only the vertices of triangles that are seen receive a gradient.
    model_depth(v, raster, faces).values.sum().backward()
    seen = torch.zeros(len(verts), dtype=torch.bool)
    seen[torch.as_tensor(faces)[ids[ids >= 0].long()].flatten()] = True
    assert (v.grad[0, ~seen] == 0).all() and (v.grad[0, seen, 2] != 0).any()


def test_backend_choice():
    verts, faces = bumpy_scene()
    r = make_rasterizer(faces, len(verts), "auto", "cpu")
    assert isinstance(r, GLRasterizer) and r.backend == "gl"
    r.release()
    with pytest.raises(ValueError):
        make_rasterizer(faces, len(verts), "vulkan")
    with pytest.raises(ValueError):
        make_rasterizer(faces, len(verts), "nvdiffrast", "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not nvdiffrast_available(), reason="needs CUDA and nvdiffrast (pip install .[gpu])")
def test_nvdiffrast_matches_gl():
    scenes = [bumpy_scene((0.12, 0.08)), bumpy_scene((-0.03, 0.02), z0=0.65), bumpy_scene((0.2, -0.12))]
    verts = torch.as_tensor(np.stack([s[0] for s in scenes]))
    faces = scenes[0][1]
    crops = [crop_around(KINECT, verts[b].numpy()) for b in range(3)]
    crops[1][0] -= 7  # crops of different sizes and offsets
    gl = make_rasterizer(faces, verts.shape[1], "gl").rasterize(verts, KINECT, crops)
    nv = make_rasterizer(faces, verts.shape[1], "nvdiffrast", "cuda").rasterize(verts.cuda(), KINECT, crops)
    assert nv.backend == "nvdiffrast" and nv.tri_ids.device.type == "cuda"
    ids_nv, ids_gl = nv.tri_ids.cpu().numpy(), gl.tri_ids.numpy()
    for b in range(3):
        assert id_agreement(ids_nv[b], ids_gl[b]) >= 0.99
    both = torch.as_tensor((ids_nv >= 0) & (ids_nv == ids_gl))
    d_nv = model_depth(verts.cuda().double(), nv, faces).values.cpu()
    d_gl = model_depth(verts.double(), gl, faces).values
    assert (d_nv - d_gl).abs()[both].max() < 0.5e-3
    assert (nv.barycentrics.cpu() - gl.barycentrics).abs()[both].max() < 2e-3
