"""Synthetic face models and RGB-D observations with ground truth, for the fitter's tests and benchmarks.

The BFM is licensed per user and never shipped, so tests and benchmarks use a face-like model in
the same file layout (`write_bfm_mat` writes a Deep3DFaceRecon-style `BFM_model_front.mat`,
decimetres, 1-based triangles, plus a `landmark_mapping2.json`): a smooth face-shaped height field
(ellipsoidal head, nose, brow ridge, eye sockets, lips, chin) sampled on a regular grid, with random
smooth (radial-basis) identity and expression modes.

Observations: landmarks are the exact (distorted) projections of the mapped vertices; colour
(optional, for the photometric term) is the mesh with per-vertex albedo (`synthetic_albedo`: skin,
red lips, brows and a fine mottling) under the renderer's smooth shading; depth maps are rendered by the project's OpenGL renderer (`mmface4d_stream.render.renderer.MeshRenderer`,
exact metric depth with the Kinect lens model) when an OpenGL context can be created, else by a
small z-buffered splatting rasterizer (a dense barycentric sampling of every triangle, nearest
sample per pixel; ~50x slower, depth within ~0.5 mm of exact).
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path

import numpy as np

from mmface4d_stream.face.models import R_CAMERA_FROM_MODEL_FRONTAL, FaceModel
from mmface4d_stream.fit.camera_terms import FitCamera
from mmface4d_stream.geometry import RigidTransform, so3_exp
from mmface4d_stream.fit.fit_io import CameraObservation, FrameObservation

logger = logging.getLogger(__name__)

__all__ = [
    "synthetic_face_model",
    "write_bfm_mat",
    "make_rig",
    "render_depth_mm",
    "synthetic_albedo",
    "synthetic_frame",
    "frontal_pose",
]


def _face_height(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """z (metres, out of the face) of the synthetic face surface at model-frame (x, y)."""
    head = 0.10 * np.sqrt(np.clip(1 - (x / 0.095) ** 2 - (y / 0.13) ** 2, 0, None))
    nose = 0.022 * np.exp(-(x / 0.011) ** 2 - ((y + 0.005) / 0.028) ** 2) * (y < 0.02) \
        + 0.012 * np.exp(-(x / 0.009) ** 2 - ((y - 0.02) / 0.02) ** 2)
    brow = 0.006 * np.exp(-((np.abs(x) - 0.032) / 0.02) ** 2 - ((y - 0.045) / 0.008) ** 2)
    eyes = -0.008 * np.exp(-((np.abs(x) - 0.033) / 0.014) ** 2 - ((y - 0.03) / 0.009) ** 2)
    lips = 0.005 * np.exp(-(x / 0.022) ** 2 - ((y + 0.045) / 0.008) ** 2)
    chin = 0.006 * np.exp(-(x / 0.02) ** 2 - ((y + 0.085) / 0.012) ** 2)
    return head + nose + brow + eyes + lips + chin


def _rbf_modes(points: np.ndarray, k: int, rng: np.random.Generator, amplitude_m: float, width_m: float) -> np.ndarray:
    """(N, 3, k) smooth random displacement fields, each a sum of 3 Gaussian bumps."""
    modes = np.zeros((len(points), 3, k))
    for j in range(k):
        for _ in range(3):
            centre = points[rng.integers(len(points))]
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            w = np.exp(-((points - centre) ** 2).sum(1) / (2 * width_m**2))
            modes[:, :, j] += amplitude_m * w[:, None] * direction[None]
    return modes


def synthetic_face_model(
    n_vertices: int = 3000,
    n_id: int = 20,
    n_exp: int = 10,
    n_landmarks: int = 60,
    seed: int = 0,
) -> FaceModel:
    """A BFM-like face model with exactly `n_vertices` vertices (model frame, metres).

    The vertices are the `n_vertices` points of a regular grid nearest the face centre (elliptic
    distance), lifted to the face surface; landmarks map detector indices 0..n_landmarks-1 to
    vertices spread over the face.
    """
    rng = np.random.default_rng(seed)
    # Grid spacing chosen so that the face ellipse (0.075 x 0.105 m) holds ~n_vertices points.
    area = np.pi * 0.075 * 0.105
    h = np.sqrt(area / n_vertices)
    xs = np.arange(-0.1, 0.1 + h / 2, h)
    ys = np.arange(-0.14, 0.14 + h / 2, h)
    gx, gy = np.meshgrid(xs, ys)
    rho = (gx / 0.075) ** 2 + (gy / 0.105) ** 2
    order = np.argsort(rho.ravel(), kind="stable")[:n_vertices]
    keep = np.zeros(gx.size, bool)
    keep[order] = True
    index = -np.ones(gx.size, np.int64)
    index[order] = np.arange(n_vertices)
    index_grid = index.reshape(gx.shape)
    x, y = gx.ravel()[order], gy.ravel()[order]
    verts = np.stack([x, y, _face_height(x, y)], 1)
    a, b = index_grid[:-1, :-1], index_grid[:-1, 1:]
    c, d = index_grid[1:, :-1], index_grid[1:, 1:]
    # Grid rows go up in y; (a, b, d) and (a, d, c) wind counter-clockwise seen from +z.
    t1 = np.stack([a, b, d], -1).reshape(-1, 3)
    t2 = np.stack([a, d, c], -1).reshape(-1, 3)
    tris = np.concatenate([t1, t2])
    tris = tris[(tris >= 0).all(1)]
    id_basis = _rbf_modes(verts, n_id, rng, 0.004, 0.03)
    exp_basis = _rbf_modes(verts, n_exp, rng, 0.004, 0.02)
    # Landmarks: vertices nearest to a jittered grid over the inner face.
    lx, ly = np.meshgrid(np.linspace(-0.05, 0.05, 8), np.linspace(-0.075, 0.06, 8))
    targets = np.stack([lx.ravel(), ly.ravel()], 1)[:n_landmarks]
    lm_vertex = np.array([int(np.argmin(((verts[:, :2] - p) ** 2).sum(1))) for p in targets])
    lm_vertex = np.unique(lm_vertex)
    return FaceModel(
        name="bfm",
        mean_shape=verts,
        id_basis=id_basis,
        exp_basis=exp_basis,
        triangles=tris,
        landmark_detector_index=np.arange(len(lm_vertex)),
        landmark_vertex=lm_vertex,
    )


def write_bfm_mat(model: FaceModel, folder: str | Path, drop_keys: tuple[str, ...] = ()) -> Path:
    """Write `model` as Deep3DFaceRecon's `BFM_model_front.mat` (decimetres) + `landmark_mapping2.json`.

    `drop_keys` leaves arrays out (to test the loader's errors). Returns the .mat path.
    """
    import scipy.io

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = model.n_vertices
    arrays = {
        "meanshape": (model.mean_shape.astype(np.float64) * 10).reshape(1, -1).astype(np.float32),
        "idBase": (model.id_basis.astype(np.float64) * 10).reshape(3 * n, -1).astype(np.float32),
        "exBase": (model.exp_basis.astype(np.float64) * 10).reshape(3 * n, -1).astype(np.float32),
        "tri": (model.triangles + 1).astype(np.float64),
        "point_buf": np.ones((n, 8)),
        "meantex": np.full((1, 3 * n), 128.0, np.float32),
        "texBase": np.zeros((3 * n, 2), np.float32),
    }
    for k in drop_keys:
        arrays.pop(k, None)
    path = folder / "BFM_model_front.mat"
    scipy.io.savemat(str(path), arrays)
    pairs = [[int(d), int(v)] for d, v in zip(model.landmark_detector_index, model.landmark_vertex)]
    half = len(pairs) // 2
    (folder / "landmark_mapping2.json").write_text(json.dumps({"upper": pairs[:half], "lower": pairs[half:]}))
    return path


def make_rig(
    n_cameras: int,
    distance_m: float = 0.7,
    side_angle_deg: float = 35.0,
    width: int = 1920,
    height: int = 1080,
    focal_px: float = 910.0,
    distortion: tuple[float, ...] | None = None,
) -> list[tuple[FitCamera, np.ndarray]]:
    """1 to 3 cameras looking at a face at (0, 0, distance_m) in the reference frame.

    Camera 0 is the reference (identity); cameras 1 and 2 sit at ±side_angle_deg about the
    vertical axis through the face. Returns [(FitCamera, T_ref_from_cam (4, 4))].
    """
    if not 1 <= n_cameras <= 3:
        raise ValueError(f"make_rig builds 1 to 3 cameras, got {n_cameras}")
    cam = FitCamera(focal_px, focal_px, (width - 1) / 2 + 3.5, (height - 1) / 2 - 2.5, width, height, distortion)
    face = np.array([0.0, 0.0, distance_m])
    rig = []
    for angle in [0.0, side_angle_deg, -side_angle_deg][:n_cameras]:
        a = np.deg2rad(angle)
        centre = face + distance_m * np.array([np.sin(a), 0.0, -np.cos(a)])
        z = (face - centre) / np.linalg.norm(face - centre)
        y = np.array([0.0, 1.0, 0.0]) - z * z[1]
        y /= np.linalg.norm(y)
        x = np.cross(y, z)
        rig.append((cam, RigidTransform(np.stack([x, y, z], 1), centre).as_matrix()))
    return rig


@lru_cache(maxsize=8)
def _gl_renderer(camera: FitCamera, triangles_bytes: bytes, n_vertices: int, colors_bytes: bytes | None = None):
    """The project's OpenGL renderer for `camera` (Kinect lens model): unshaded (depth), or with
    per-vertex colours (float32 (N, 3) bytes) and smooth shading."""
    from mmface4d_stream.k4a.camera_model import CameraModel
    from mmface4d_stream.render.renderer import MeshRenderer

    dist = dict(zip(("k1", "k2", "k3", "k4", "k5", "k6", "p1", "p2"), camera.distortion or (0.0,) * 8))
    model = CameraModel(width=camera.width, height=camera.height, fx=camera.fx, fy=camera.fy,
                        cx=camera.cx, cy=camera.cy, **dist)
    faces = np.frombuffer(triangles_bytes, dtype=np.int64).reshape(-1, 3)
    if colors_bytes is None:
        return MeshRenderer(model, faces, n_vertices, shading="none")
    colors = np.frombuffer(colors_bytes, dtype=np.float32).reshape(-1, 3)
    return MeshRenderer(model, faces, n_vertices, colors=colors, shading="smooth")


def synthetic_albedo(model: FaceModel) -> np.ndarray:
    """(N, 3) float32 RGB in [0, 1] per vertex of `model`, from its mean shape's model-frame (x, y):
    skin with a fine mottling (texture for a photometric term everywhere), darker brows, red lips
    (where `synthetic_face_model` puts them)."""
    v = np.asarray(model.mean_shape, np.float64)
    x, y = v[:, 0], v[:, 1]
    skin = np.array([0.78, 0.58, 0.47])
    mottle = 1 + 0.12 * np.sin(140 * x + 3 * np.sin(90 * y)) * np.cos(120 * y)
    lips = np.exp(-(x / 0.024) ** 2 - ((y + 0.045) / 0.007) ** 2)
    brows = np.exp(-((np.abs(x) - 0.032) / 0.018) ** 2 - ((y - 0.047) / 0.005) ** 2)
    rgb = skin[None] * mottle[:, None]
    rgb = rgb * (1 - 0.55 * brows[:, None]) + lips[:, None] * (np.array([0.72, 0.22, 0.25]) - rgb)
    return np.clip(rgb, 0, 1).astype(np.float32)


_gl_failed = False


def render_depth_mm(vertices_cam: np.ndarray, triangles: np.ndarray, camera: FitCamera, method: str = "auto") -> np.ndarray:
    """Depth (uint16 (H, W) millimetres, 0 = empty) of a mesh given in camera coordinates (metres).

    method: "opengl" (the project's renderer), "splat" (numpy z-buffer of triangle samples, each
    triangle sampled every ≤ 0.4 px of its largest projected edge), or "auto" (OpenGL when a
    context can be created).
    """
    global _gl_failed
    if method not in ("auto", "opengl", "splat"):
        raise ValueError(f"method must be 'auto', 'opengl' or 'splat', got {method!r}")
    tri = np.ascontiguousarray(triangles, dtype=np.int64)
    if method == "opengl" or (method == "auto" and not _gl_failed):
        try:
            renderer = _gl_renderer(camera, tri.tobytes(), len(vertices_cam))
            return renderer.render(np.asarray(vertices_cam, dtype=np.float32)).depth_mm
        except Exception as exc:  # no EGL / GL driver: fall back to the numpy rasterizer
            if method == "opengl":
                raise
            _gl_failed = True
            logger.warning("OpenGL depth rendering unavailable (%s); using the splatting rasterizer", exc)
    return _splat_depth_mm(vertices_cam, tri, camera)


def _splat_depth_mm(vertices_cam: np.ndarray, tri: np.ndarray, camera: FitCamera) -> np.ndarray:
    v = np.asarray(vertices_cam, dtype=np.float64)
    z = v[:, 2]
    uv = np.stack([v[:, 0] / z * camera.fx + camera.cx, v[:, 1] / z * camera.fy + camera.cy], 1)
    edge = np.max([np.linalg.norm(uv[tri[:, i]] - uv[tri[:, (i + 1) % 3]], axis=1) for i in range(3)], axis=0)
    m = int(np.clip(np.ceil(np.percentile(edge, 99) / 0.4), 1, 64))
    i, j = np.meshgrid(np.arange(m + 1), np.arange(m + 1))
    sel = (i + j) <= m
    b1, b2 = i[sel] / m, j[sel] / m
    b0 = 1 - b1 - b2
    p = (b0[None, :, None] * v[tri[:, 0]][:, None] + b1[None, :, None] * v[tri[:, 1]][:, None]
         + b2[None, :, None] * v[tri[:, 2]][:, None]).reshape(-1, 3)
    p = p[p[:, 2] > 0.05]
    xy = camera.distort(p[:, :2] / p[:, 2:3])
    u = np.round(xy[:, 0] * camera.fx + camera.cx).astype(np.int64)
    w_ = np.round(xy[:, 1] * camera.fy + camera.cy).astype(np.int64)
    inside = (u >= 0) & (u < camera.width) & (w_ >= 0) & (w_ < camera.height)
    pix = w_[inside] * camera.width + u[inside]
    zz = p[inside, 2]
    order = np.lexsort((zz, pix))
    pix, zz = pix[order], zz[order]
    first = np.ones(len(pix), bool)
    first[1:] = pix[1:] != pix[:-1]
    depth = np.zeros(camera.width * camera.height, np.uint16)
    depth[pix[first]] = np.clip(np.round(zz[first] * 1000), 0, 65535).astype(np.uint16)
    return depth.reshape(camera.height, camera.width)


def synthetic_frame(
    model: FaceModel,
    rig: list[tuple[FitCamera, np.ndarray]],
    rotation: np.ndarray,
    translation: np.ndarray,
    id_coeffs: np.ndarray | None = None,
    exp_coeffs: np.ndarray | None = None,
    n_detector_points: int = 478,
    landmark_noise_px: float = 0.0,
    with_depth: bool = True,
    rng: np.random.Generator | None = None,
    frame_index: int | None = None,
    with_color: bool = False,
) -> tuple[FrameObservation, np.ndarray]:
    """Observations of the model at a pose (model -> reference frame) with known coefficients.

    Returns (FrameObservation, ground-truth vertices (N, 3) metres in the reference frame).
    Landmarks: exact distorted projections (+ optional Gaussian noise), NaN and confidence 0 for
    detector points the model does not map. with_color: each camera's `color_rgb` (the whole
    image) rendered with `synthetic_albedo` and smooth shading (OpenGL only), its depth from the
    same rendering.
    """
    colors = synthetic_albedo(model).tobytes() if with_color else None
    verts = model.vertices(id_coeffs, exp_coeffs).astype(np.float64)
    x_ref = verts @ np.asarray(rotation, np.float64).T + np.asarray(translation, np.float64)
    n_det = max(n_detector_points, int(model.landmark_detector_index.max()) + 1)
    cameras = []
    for cam, t_ref_from_cam in rig:
        r = t_ref_from_cam[:3, :3]
        xc = (x_ref - t_ref_from_cam[:3, 3]) @ r
        lm = np.full((n_det, 2), np.nan)
        conf = np.zeros(n_det)
        pv = xc[model.landmark_vertex]
        xy = cam.distort(pv[:, :2] / pv[:, 2:3])
        uv = np.stack([xy[:, 0] * cam.fx + cam.cx, xy[:, 1] * cam.fy + cam.cy], 1)
        if landmark_noise_px and rng is not None:
            uv = uv + rng.normal(scale=landmark_noise_px, size=uv.shape)
        lm[model.landmark_detector_index] = uv
        conf[model.landmark_detector_index] = 1.0
        rgb = None
        if with_color:
            tri = np.ascontiguousarray(model.triangles, dtype=np.int64)
            rendered = _gl_renderer(cam, tri.tobytes(), len(xc), colors).render(np.asarray(xc, np.float32))
            rgb = rendered.color
            depth = rendered.depth_mm if with_depth else None
        else:
            depth = render_depth_mm(xc, model.triangles, cam) if with_depth else None
        cameras.append(CameraObservation(cam, lm, depth, conf, t_ref_from_cam, color_rgb=rgb))
    return FrameObservation(cameras, frame_index), x_ref.astype(np.float32)


def frontal_pose(yaw_deg: float = 0.0, pitch_deg: float = 0.0, roll_deg: float = 0.0,
                 translation=(0.0, 0.0, 0.7)) -> tuple[np.ndarray, np.ndarray]:
    """Model -> reference pose of a face looking at the reference camera, turned by small angles."""
    turn = so3_exp(np.deg2rad([pitch_deg, yaw_deg, roll_deg]))
    return turn @ R_CAMERA_FROM_MODEL_FRONTAL, np.asarray(translation, np.float64)
