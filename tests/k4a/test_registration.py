"""Depth <-> color registration on synthetic scenes with known geometry and on the real recording."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from mmface4d_stream.k4a.calibration import K4aCalibration
from mmface4d_stream.k4a.modes import ColorResolution, DepthMode
from mmface4d_stream.k4a.registration import DepthToColorRegistration, register_depth_to_color


@pytest.fixture(scope="module")
def raw_json(k4a_sample_dir) -> bytes:
    return (k4a_sample_dir / "calibration.json").read_bytes()


@pytest.fixture(scope="module")
def reg_1080(raw_json) -> DepthToColorRegistration:
    return DepthToColorRegistration(K4aCalibration.from_raw_json(raw_json, "1080P", "NFOV_UNBINNED"))


def plane_depth(reg: DepthToColorRegistration, normal, offset_m: float) -> np.ndarray:
    """Depth image (mm) of the plane n.X = offset (depth camera frame) seen by the depth camera."""
    rays = reg._depth_rays.astype(np.float64)
    n = np.asarray(normal, float) / np.linalg.norm(normal)
    z = offset_m / (rays @ n)
    return np.where(rays[..., 2] > 0, np.rint(z * 1000.0), 0).astype(np.uint16)


@pytest.mark.parametrize("normal", [(0.0, 0.0, 1.0), (0.4, -0.3, 1.0), (0.8, 0.1, 1.0)])
def test_plane_lands_on_same_plane_in_color(reg_1080, normal):
    cal = reg_1080.calibration
    depth = plane_depth(reg_1080, normal, 0.8)
    registered = reg_1080.depth_to_color(depth)
    assert registered.shape == (1080, 1920) and registered.dtype == np.uint16
    vs, us = np.nonzero(registered)
    vs, us = vs[::5], us[::5]  # a fifth of the ~1.5 M pixels fits the plane as well, 5x faster
    points, ok = cal.color.unproject(np.stack([us, vs], axis=-1).astype(float), registered[vs, us] / 1000.0)
    assert ok.all()
    points = points[ok]
    n = np.asarray(normal) / np.linalg.norm(normal)
    n_color = cal.T_color_from_depth.R @ n
    d_color = 0.8 + n_color @ cal.T_color_from_depth.t
    centre = points.mean(axis=0)
    fitted = np.linalg.svd(points - centre, full_matrices=False)[2][2]
    fitted *= np.sign(fitted @ n_color)
    assert np.degrees(np.arccos(min(1.0, fitted @ n_color))) < 0.05
    assert abs(fitted @ centre - d_color) < 0.001
    distance = np.abs(points @ n_color - d_color)
    assert np.median(distance) < 0.0006  # mm rounding of input and output
    # Blocks follow the local surface gradient; splatted flat, the 40 degree slant reaches ~3 mm.
    assert np.percentile(distance, 99) < 0.0015
    # Dense: the footprints leave no hole inside the covered area, even on a 40 degree slant.
    covered = registered > 0
    assert (ndimage.binary_fill_holes(covered) & ~covered).sum() == 0
    assert covered.mean() > 0.6


def test_nearest_surface_wins_and_holes_stay_zero(reg_1080):
    cal = reg_1080.calibration
    depth = plane_depth(reg_1080, (0, 0, 1), 1.5)
    depth[250:330, 280:360] = 600  # a near card in front of the wall
    depth[50:100, 50:120] = 0  # no measurement
    registered = reg_1080.depth_to_color(depth)
    # The card's centre pixel, projected independently, carries the card's depth.
    rays, _ = cal.depth.unproject_to_rays(np.array([[320.0, 290.0], [85.0, 75.0]]))
    card = cal.T_color_from_depth.apply(rays[0] * 0.6)
    (u, v), _ = cal.color.project(card)
    assert abs(int(registered[round(v), round(u)]) - round(card[2] * 1000)) <= 1
    card_values = registered[round(v) - 20 : round(v) + 20, round(u) - 20 : round(u) + 20]
    assert np.abs(card_values.astype(int) - round(card[2] * 1000)).max() <= 2
    # The card hides the wall behind it: no wall value survives inside its footprint.
    assert (card_values > 1000).sum() == 0
    hole = cal.T_color_from_depth.apply(rays[1] * 1.5)
    (hu, hv), _ = cal.color.project(hole)
    assert registered[round(hv) - 10 : round(hv) + 10, round(hu) - 10 : round(hu) + 10].max() == 0
    # Behind the card, the wall is occluded for the color camera only partly: the card's
    # shadow (wall seen by color, not by depth) is a hole.
    assert (registered == 0).sum() > 0


def test_numpy_and_torch_agree(reg_1080):
    depth = plane_depth(reg_1080, (0.3, -0.2, 1.0), 0.9)
    depth[300:340, 300:360] = 500
    expected = reg_1080.depth_to_color(depth)
    cpu_fast = reg_1080.depth_to_color(torch.from_numpy(depth.astype(np.int32)))
    assert isinstance(cpu_fast, torch.Tensor) and cpu_fast.dtype == torch.uint16
    np.testing.assert_array_equal(cpu_fast.numpy(), expected)
    torch_ops = reg_1080.depth_to_color(torch.from_numpy(depth.astype(np.int32)), backend="torch")
    diff = np.abs(torch_ops.numpy().astype(int) - expected.astype(int))
    # The kernels round half-way values differently, and float32 may flip a block edge.
    assert (diff > 0).mean() < 0.01 and (diff > 1).sum() <= 5
    flat = DepthToColorRegistration(reg_1080.calibration, interpolate=False)
    expected = flat.depth_to_color(depth)
    diff = np.abs(flat.depth_to_color(torch.from_numpy(depth.astype(np.int32)), backend="torch").numpy() - expected.astype(int))
    assert (diff > 0).mean() < 1e-4 and (diff > 1).sum() <= 5


@pytest.mark.gpu
def test_cuda_matches_numpy(reg_1080):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    depth = plane_depth(reg_1080, (0.3, -0.2, 1.0), 0.9)
    expected = reg_1080.depth_to_color(depth)
    got = reg_1080.depth_to_color(torch.from_numpy(depth.astype(np.int32)).cuda())
    assert got.device.type == "cuda"
    diff = np.abs(got.cpu().numpy().astype(int) - expected.astype(int))
    assert (diff > 0).mean() < 0.01 and (diff > 1).sum() <= 5
    color = np.random.default_rng(0).integers(0, 255, (1080, 1920, 3), dtype=np.uint8)
    c_np = reg_1080.color_to_depth(color, depth)
    c_cuda = reg_1080.color_to_depth(torch.from_numpy(color).cuda(), torch.from_numpy(depth.astype(np.int32)).cuda())
    assert (np.abs(c_cuda.cpu().numpy().astype(int) - c_np.astype(int)) > 1).mean() < 1e-3


def _ramp(u, v):
    """A color pattern linear in the pixel position, so bilinear sampling reproduces it exactly."""
    return np.stack([u / 8.0, v / 5.0, 255.0 - (u + v) / 12.0], axis=-1)


def test_color_to_depth_samples_a_known_pattern(reg_1080):
    cal = reg_1080.calibration
    u, v = np.meshgrid(np.arange(1920.0), np.arange(1080.0))
    color = np.rint(_ramp(u, v)).astype(np.uint8)
    depth = plane_depth(reg_1080, (0.2, 0.1, 1.0), 0.7)
    depth[:40] = 0
    out = reg_1080.color_to_depth(color, depth)
    assert out.shape == (576, 640, 3) and out.dtype == np.uint8
    # Independent reference: unproject each depth pixel, move it, project it (float64 API).
    grid = cal.depth.pixel_grid()
    points, ok = cal.depth.unproject(grid, depth / 1000.0)
    pixels, inside = cal.color.project(cal.T_color_from_depth.apply(points), require_inside=True)
    ok &= inside
    expected = _ramp(pixels[..., 0], pixels[..., 1])
    assert ok.mean() > 0.8
    assert np.abs(out[ok].astype(float) - expected[ok]).max() <= 1.01
    assert (out[~ok] == 0).all()
    assert (out[:40] == 0).all()
    gray = reg_1080.color_to_depth(color[..., 0], depth)
    np.testing.assert_array_equal(gray, out[..., 0])
    for backend in ("auto", "torch"):  # "torch": the ops a GPU tensor runs
        tensor = reg_1080.color_to_depth(torch.from_numpy(color), torch.from_numpy(depth.astype(np.int32)), backend=backend)
        assert tensor.dtype == torch.uint8
        assert (np.abs(tensor.numpy().astype(int) - out.astype(int)) > 1).sum() == 0


@pytest.mark.parametrize(
    ("resolution", "mode", "largest"),
    [("720P", "NFOV_UNBINNED", 3), ("1080P", "NFOV_2X2BINNED", 9), ("720P", "WFOV_UNBINNED", 6)],
)
def test_footprints_follow_the_resolution_ratio(raw_json, resolution, mode, largest):
    cal = K4aCalibration.from_raw_json(raw_json, resolution, mode)
    reg = DepthToColorRegistration(cal)
    assert 1 <= reg.max_footprint <= largest
    depth = np.full(cal.depth.size[::-1], 1000, np.uint16)
    registered = reg.depth_to_color(depth)
    covered = registered > 0
    assert (ndimage.binary_fill_holes(covered) & ~covered).sum() == 0
    fixed = DepthToColorRegistration(cal, footprint=1)
    assert fixed.max_footprint == 1


@pytest.fixture
def sample_depth_frame(k4a_sample_dir) -> np.ndarray:
    """The real recording's first depth frame, (576, 640) uint16 mm."""
    av = pytest.importorskip("av")
    with av.open(str(k4a_sample_dir / "recording.mkv")) as container:
        stream = next(s for s in container.streams.video if s.metadata.get("title") == "DEPTH")
        packet = next(p for p in container.demux(stream) if p.size)
        # b16g tracks hold big-endian 16-bit millimetres.
        return np.frombuffer(bytes(packet), ">u2").reshape(576, 640).astype(np.uint16)


def test_real_recording_frame(sample_depth_frame, raw_json):
    depth = sample_depth_frame
    cal = K4aCalibration.from_raw_json(raw_json, ColorResolution.RES_720P, DepthMode.NFOV_UNBINNED)
    registered = register_depth_to_color(depth, cal)
    assert 0.4 < (registered > 0).mean() < 0.9
    flat = DepthToColorRegistration(cal, interpolate=False).depth_to_color(depth)
    np.testing.assert_array_equal(flat > 0, registered > 0)
    # Check against an independent float64 projection of each depth pixel: the pixel it lands
    # on holds its color-camera Z, or a nearer surface's.
    points, ok = cal.depth.unproject(cal.depth.pixel_grid(), depth / 1000.0)
    pc = cal.T_color_from_depth.apply(points[ok])
    pixels, inside = cal.color.project(pc, require_inside=True)
    u = np.rint(pixels[inside, 0]).astype(int)
    v = np.rint(pixels[inside, 1]).astype(int)
    z = np.rint(pc[inside, 2] * 1000)
    got = flat[v, u].astype(float)
    assert (got > 0).all()
    assert (got <= z + 1).all()  # nothing farther than the pixel landing there
    assert np.mean(np.abs(got - z) <= 1) > 0.9
    # Interpolated blocks follow the (noisy) local surface: within a few mm of the same values.
    got = registered[v, u].astype(float)
    assert np.mean(np.abs(got - z) <= 1) > 0.8
    assert np.mean(got - z > 10) < 1e-3


def test_input_checks(reg_1080):
    with pytest.raises(ValueError, match=r"shape \(576, 640\)"):
        reg_1080.depth_to_color(np.zeros((288, 320), np.uint16))
    with pytest.raises(ValueError, match="integer millimetres"):
        reg_1080.depth_to_color(np.zeros((576, 640), np.float32))
    with pytest.raises(ValueError, match="backend"):
        reg_1080.depth_to_color(np.zeros((576, 640), np.uint16), backend="cuda")
    with pytest.raises(ValueError, match="uint8"):
        reg_1080.color_to_depth(np.zeros((1080, 1920, 3), np.float32), np.zeros((576, 640), np.uint16))
    with pytest.raises(ValueError, match=r"\(1080, 1920, C\)"):
        reg_1080.color_to_depth(np.zeros((720, 1280, 3), np.uint8), np.zeros((576, 640), np.uint16))
    with pytest.raises(ValueError, match="footprint"):
        DepthToColorRegistration(reg_1080.calibration, footprint=0)
    with pytest.raises(ValueError, match="K4aCalibration"):
        DepthToColorRegistration("calibration.json")


def test_depth_points(reg_1080):
    depth = plane_depth(reg_1080, (0, 0, 1), 1.2)
    points = reg_1080.depth_points(depth)
    assert points.shape == (576, 640, 3) and points.dtype == np.float32
    ok = depth > 0
    np.testing.assert_allclose(points[ok][:, 2], 1.2, atol=5e-4)
    t = reg_1080.depth_points(torch.from_numpy(depth.astype(np.int32)))
    np.testing.assert_allclose(t.numpy(), points, atol=1e-6)


def test_pinhole_rig_maps_a_card_where_the_formula_says():
    import warnings

    from mmface4d_stream.geometry import RigidTransform
    from mmface4d_stream.k4a.synthetic_calibration import synthetic_raw_calibration

    # Pinhole cameras, color 50 mm to the depth camera's right, no z offset (0/0 for empty pixels).
    raw = synthetic_raw_calibration(T_color_from_depth=RigidTransform(np.eye(3), [-0.05, 0, 0]), distortion=False)
    cal = raw.calibration("1080P", "NFOV_UNBINNED")
    reg = DepthToColorRegistration(cal)
    depth = np.zeros((576, 640), np.uint16)
    depth[200:300, 250:350] = 800
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        registered = reg.depth_to_color(depth)
    assert set(np.unique(registered)) == {0, 800}
    d, c = cal.depth, cal.color
    # Card edges in the depth image (pixel centres 250 and 349, +-1/2 pixel) mapped by the pinhole formula.
    x_edges = (np.array([249.5, 349.5]) - d.cx) / d.fx * 0.8
    u_edges = c.fx * (x_edges - 0.05) / 0.8 + c.cx
    y_edges = (np.array([199.5, 299.5]) - d.cy) / d.fy * 0.8
    v_edges = c.fy * y_edges / 0.8 + c.cy
    rows, cols = np.nonzero(registered)
    assert abs(cols.min() - u_edges[0]) < 1.5 and abs(cols.max() - u_edges[1]) < 1.5
    assert abs(rows.min() - v_edges[0]) < 1.5 and abs(rows.max() - v_edges[1]) < 1.5
    inner = registered[int(v_edges[0]) + 2 : int(v_edges[1]) - 1, int(u_edges[0]) + 2 : int(u_edges[1]) - 1]
    assert (inner == 800).all()


# -- registering only a box of the color image --------------------------------------------------


def _card_scene(reg):
    """A wall at 1.5 m, a card at 0.6 m in front of it (depth edges), a hole without depth."""
    depth = plane_depth(reg, (0, 0, 1), 1.5)
    depth[250:330, 280:360] = 600
    depth[50:100, 50:120] = 0
    return depth


def _noise_scene(reg):
    """Every pixel at its own random depth from 0.25 to 5 m: the widest parallax, no surfaces."""
    depth = np.random.default_rng(1).integers(250, 5000, reg.depth_shape).astype(np.uint16)
    return np.where(reg._depth_rays[..., 2] > 0, depth, 0).astype(np.uint16)


def _roi_boxes(seed=0, count=12):
    rng = np.random.default_rng(seed)
    boxes = [(0, 0, 300, 200), (1620, 880, 1920, 1080), (0, 500, 1920, 501), (700, 0, 701, 1080),
             (960, 540, 961, 541), (0, 0, 1920, 1080), (850, 350, 1250, 780)]
    for _ in range(count):
        x0, y0 = int(rng.integers(0, 1900)), int(rng.integers(0, 1060))
        boxes.append((x0, y0, min(1920, x0 + int(rng.integers(1, 600))), min(1080, y0 + int(rng.integers(1, 600)))))
    return boxes


@pytest.mark.parametrize("scene", ["slanted", "card", "noise"])
def test_roi_equals_the_full_registration_sliced(reg_1080, scene):
    depth = {"slanted": lambda r: plane_depth(r, (0.8, 0.1, 1.0), 0.8), "card": _card_scene,
             "noise": _noise_scene}[scene](reg_1080)
    full = reg_1080.depth_to_color(depth)
    for box in _roi_boxes(seed=len(scene)):
        x0, y0, x1, y1 = box
        got = reg_1080.depth_to_color(depth, roi=box)
        assert got.shape == (y1 - y0, x1 - x0) and got.dtype == np.uint16
        np.testing.assert_array_equal(got, full[y0:y1, x0:x1], err_msg=f"roi {box}")


def test_roi_on_the_real_recording_and_flat_blocks(sample_depth_frame, raw_json):
    depth = sample_depth_frame
    for resolution, interpolate in (("1080P", True), ("720P", True), ("1080P", False)):
        reg = DepthToColorRegistration(K4aCalibration.from_raw_json(raw_json, resolution, "NFOV_UNBINNED"),
                                       interpolate=interpolate)
        full = reg.depth_to_color(depth)
        hc, wc = reg.color_shape
        for x0, y0, x1, y1 in _roi_boxes(seed=7, count=6):
            x0, y0 = min(x0, wc - 1), min(y0, hc - 1)
            box = (x0, y0, min(x1, wc), min(y1, hc))
            np.testing.assert_array_equal(reg.depth_to_color(depth, roi=box), full[box[1] : box[3], box[0] : box[2]],
                                          err_msg=f"{resolution} interpolate={interpolate} roi {box}")


def test_roi_where_no_depth_lands(reg_1080):
    depth = np.zeros(reg_1080.depth_shape, np.uint16)
    assert (reg_1080.depth_to_color(depth, roi=(100, 100, 400, 300)) == 0).all()
    depth[250:330, 280:360] = 600  # a card near the middle: nothing lands in a corner
    got = reg_1080.depth_to_color(depth, roi=(0, 0, 300, 200))
    assert got.shape == (200, 300) and (got == 0).all()
    full = reg_1080.depth_to_color(depth)
    np.testing.assert_array_equal(reg_1080.depth_to_color(depth, roi=(700, 300, 1200, 800)), full[300:800, 700:1200])


def test_roi_tables_are_reused_while_the_box_moves_a_little(raw_json):
    reg = DepthToColorRegistration(K4aCalibration.from_raw_json(raw_json, "1080P", "NFOV_UNBINNED"))
    depth = _card_scene(reg)
    full = reg.depth_to_color(depth)
    for dx, dy in [(0, 0), (3, -2), (-4, 1), (2, 3)]:
        box = (805 + dx, 405 + dy, 1195 + dx, 795 + dy)
        np.testing.assert_array_equal(reg.depth_to_color(depth, roi=box), full[box[1] : box[3], box[0] : box[2]])
    assert len(reg._table_cache) == 1
    # The region registered is a small part of the depth image.
    (rect, _), = reg._table_cache
    c0, r0, c1, r1 = rect
    assert (c1 - c0) * (r1 - r0) < 0.35 * depth.size


def test_roi_with_torch_and_threads(reg_1080):
    from concurrent.futures import ThreadPoolExecutor

    depth = plane_depth(reg_1080, (0.3, -0.2, 1.0), 0.9)
    depth[300:340, 300:360] = 500
    full = reg_1080.depth_to_color(depth)
    box = (700, 300, 1150, 760)
    expected = full[300:760, 700:1150]
    tensor = torch.from_numpy(depth.astype(np.int32))
    got = reg_1080.depth_to_color(tensor, roi=box)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.uint16
    np.testing.assert_array_equal(got.numpy(), expected)
    torch_full = reg_1080.depth_to_color(tensor, backend="torch")
    got = reg_1080.depth_to_color(tensor, roi=box, backend="torch")
    np.testing.assert_array_equal(got.numpy(), torch_full.numpy()[300:760, 700:1150])
    # Scratch arrays are per thread: full frames and boxes of different sizes at the same time.
    jobs = [None if k % 3 == 0 else (600 + 40 * k, 200 + 20 * k, 1000 + 40 * k, 650 + 20 * k) for k in range(9)]
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda b: reg_1080.depth_to_color(depth, roi=b), jobs))
    for box, got in zip(jobs, results):
        if box is None:
            np.testing.assert_array_equal(got, full)
        else:
            np.testing.assert_array_equal(got, full[box[1] : box[3], box[0] : box[2]])


@pytest.mark.parametrize(
    ("roi", "message"),
    [((10, 10, 10, 50), "non-empty box"), ((10, 50, 40, 20), "non-empty box"), ((-1, 0, 40, 20), "non-empty box"),
     ((1900, 0, 1921, 20), r"inside the 1920x1080"), ((0, 1000, 20, 1081), "0 <= y0 < y1 <= 1080"),
     ((0.5, 0, 20, 20), "integer color pixels"), ((0, 0, 20), "integer color pixels"), (None, None)],
)
def test_roi_checks(reg_1080, roi, message):
    depth = np.zeros((576, 640), np.uint16)
    if roi is None:
        assert reg_1080.depth_to_color(depth).shape == (1080, 1920)
        return
    with pytest.raises(ValueError, match=message):
        reg_1080.depth_to_color(depth, roi=roi)


@pytest.mark.parametrize(("resolution", "mode"), [("1080P", "NFOV_UNBINNED"), ("720P", "WFOV_UNBINNED")])
def test_projections_between_depth_levels_stay_near_the_box_of_their_ends(raw_json, resolution, mode):
    """What the ROI's safety margin relies on: between two depth levels a pixel's projection stays
    within the box spanned by its projections at the levels, up to a bowing far below 2 px."""
    from mmface4d_stream.k4a.registration_tables import _ROI_SAFETY_PX, _Scratch

    reg = DepthToColorRegistration(K4aCalibration.from_raw_json(raw_json, resolution, mode))
    hd, wd = reg.depth_shape

    def project(z_mm):
        ws = reg._projection_buffers(_Scratch(), hd * wd)
        reg._project_numpy(np.full((hd, wd), z_mm), reg._full, ws)
        return ws["x"].copy(), ws["y"].copy(), ws["ok"].copy()

    step = reg._level_step
    for j in (0, 1, 3, 7):
        (ua, va, oka), (ub, vb, okb) = project(1e12 if j == 0 else 1 / (j * step)), project(1 / ((j + 1) * step))
        assert np.nanmax(np.abs(ua - ub)[oka & okb]) < 50  # the level spacing: ~32 px of parallax (more at the edges)
        for inverse_depth in np.linspace(j * step, (j + 1) * step, 5)[1:-1]:
            u, v, ok = project(1 / inverse_depth)
            both = oka & okb & ok
            bow = np.maximum(np.maximum(np.fmin(ua, ub) - u, u - np.fmax(ua, ub)),
                             np.maximum(np.fmin(va, vb) - v, v - np.fmax(va, vb)))
            assert bow[both].max() < 0.1 * _ROI_SAFETY_PX


def test_calibration_owns_one_cached_registration(raw_json):
    cal = K4aCalibration.from_raw_json(raw_json, "720P", "NFOV_2X2BINNED")
    reg = cal.registration
    assert isinstance(reg, DepthToColorRegistration) and reg.calibration is cal
    assert cal.registration is reg
    depth = np.full(reg.depth_shape, 1000, np.uint16)
    np.testing.assert_array_equal(register_depth_to_color(depth, cal), reg.depth_to_color(depth))


def test_calibration_pickles_without_its_registration(raw_json):
    import pickle

    cal = K4aCalibration.from_raw_json(raw_json, "720P", "NFOV_2X2BINNED")
    reg = cal.registration
    back = pickle.loads(pickle.dumps(cal))
    assert back == cal and back.registration is not reg and back.registration is back.registration
