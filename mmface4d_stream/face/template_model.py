"""The built-in face model: a subject template from MediaPipe's mesh lifted by depth (no licensed file).

`TemplateModel.from_points(points_cam, valid)`: the subject's own 468 MediaPipe
FaceMesh points, lifted to 3D by the depth maps of the first good frame (see
`mmface4d_stream.fit.template_lift`), missing points filled by harmonic interpolation over the
mesh, expressed in the model frame, densified by midpoint subdivision (the 468 original points
keep their indices, so the landmark mapping is the identity), with
* 3 identity modes: anisotropic scaling about the centroid (x, y, z; a unit coefficient is a 5 %
  stretch), which absorbs a wrong depth scale or a poor first frame;
* 12 procedural expression modes built from MediaPipe's regions (jaw open, lips part, mouth
  wide, pucker, smile, frown, left/right brow raise, left/right eye close, cheek puff, upper lip
  raise): smooth displacement fields (Gaussian fall-off from each region's landmarks); a unit
  coefficient moves the region by about 1 cm (eyes and brows: 0.5 cm);
and the fitter's per-vertex offsets (Laplacian + edge regularized) carry what the modes cannot.

It is a `face.models.FaceModel` (the linear shape space, model frame: x towards the subject's
left, y up, z out of the face, metres); this module also holds the mesh helpers it is built with
(midpoint subdivision, edge list, harmonic fill) and the MediaPipe index tables of its regions.
"""

from __future__ import annotations

import logging

import numpy as np

from mmface4d_stream.face.models import FaceModel
from mmface4d_stream.face.topology import MOUTH_CORNERS, mesh_edges

logger = logging.getLogger(__name__)

__all__ = ["TemplateModel", "subdivide_midpoint"]


# ----------------------------------------------------------------------------------------------
# Mesh helpers


def subdivide_midpoint(vertices: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One level of 1-to-4 midpoint subdivision.

    Args:
        vertices: (N, 3); triangles: (F, 3) int.
    Returns:
        (new_vertices (N + E, 3), new_triangles (4F, 3), edges (E, 2)): the first N vertices are
        the originals (same indices), vertex N + e is the midpoint of edges[e]; windings preserved.
    """
    triangles = np.asarray(triangles, dtype=np.int64)
    n = len(vertices)
    directed = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    undirected = np.sort(directed, axis=1)
    edges, inverse = np.unique(undirected, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    f = len(triangles)
    m01, m12, m20 = (n + inverse[:f], n + inverse[f:2 * f], n + inverse[2 * f:])
    a, b, c = triangles[:, 0], triangles[:, 1], triangles[:, 2]
    new_tris = np.concatenate([
        np.stack([a, m01, m20], 1),
        np.stack([m01, b, m12], 1),
        np.stack([m20, m12, c], 1),
        np.stack([m01, m12, m20], 1),
    ])
    mids = 0.5 * (vertices[edges[:, 0]] + vertices[edges[:, 1]])
    return np.concatenate([vertices, mids]), new_tris, edges


def _harmonic_fill(points: np.ndarray, valid: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Fill invalid rows of points (N, 3) by solving the graph Laplace equation with valid rows fixed."""
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    n = len(points)
    if valid.all():
        return points.copy()
    w = np.ones(len(edges))
    adj = sp.coo_matrix((np.concatenate([w, w]), (np.concatenate([edges[:, 0], edges[:, 1]]),
                                                  np.concatenate([edges[:, 1], edges[:, 0]]))), shape=(n, n)).tocsr()
    lap = sp.diags(np.asarray(adj.sum(1)).ravel()) - adj
    free = np.flatnonzero(~valid)
    fixed = np.flatnonzero(valid)
    a = lap[free][:, free].tocsc()
    b = -lap[free][:, fixed] @ points[fixed]
    out = points.copy()
    # A free component not touching a valid point makes the system singular: a tiny diagonal keeps
    # it solvable (such points fall back to near the origin of the fill, i.e. are unusable anyway).
    out[free] = spla.spsolve(a + 1e-9 * sp.eye(len(free)), b).reshape(-1, 3)
    return out


# ----------------------------------------------------------------------------------------------
# MediaPipe template

# MediaPipe FaceMesh indices used to place the model frame and the procedural modes.
_MP_RIGHT_EYE_OUTER, _MP_LEFT_EYE_OUTER = 33, 263
_MP_FOREHEAD, _MP_CHIN = 10, 152
_MP_UPPER_LIP_INNER, _MP_LOWER_LIP_INNER = 13, 14
_MP_MOUTH_RIGHT, _MP_MOUTH_LEFT = MOUTH_CORNERS
_MP_UPPER_LIP_OUTER = 0
_MP_LOWER_LIP_OUTER = 17
_MP_RIGHT_CHEEK, _MP_LEFT_CHEEK = 205, 425
_MP_RIGHT_UPPER_LID, _MP_LEFT_UPPER_LID = (159, 158, 160, 161, 157, 173, 246, 56, 28, 27, 29, 30), (386, 385, 387, 388, 384, 398, 466, 286, 258, 257, 259, 260)
_MP_RIGHT_LOWER_LID, _MP_LEFT_LOWER_LID = (145, 144, 153, 154, 163, 7), (374, 373, 380, 381, 390, 249)
_MP_RIGHT_BROW = (70, 63, 105, 66, 107, 55, 65, 52, 53, 46)
_MP_LEFT_BROW = (300, 293, 334, 296, 336, 285, 295, 282, 283, 276)
_MP_UPPER_LIP = (0, 37, 39, 40, 185, 267, 269, 270, 409, 13, 82, 81, 80, 191, 312, 311, 310, 415, 11, 12, 72, 73, 302, 303)
_MP_LOWER_LIP = (17, 84, 181, 91, 146, 314, 405, 321, 375, 14, 87, 178, 88, 95, 317, 402, 318, 324, 16, 15, 85, 315)
_MP_IRIS_FIRST = 468

_EXPRESSION_NAMES = (
    "jaw_open", "lips_part", "mouth_wide", "pucker", "smile", "frown",
    "brow_raise_right", "brow_raise_left", "eye_close_right", "eye_close_left",
    "cheek_puff", "upper_lip_raise",
)
_ID_NAMES = ("scale_x", "scale_y", "scale_z")


def _falloff(points: np.ndarray, anchors: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian of the distance from each point (N, 3) to its nearest anchor (A, 3): (N,) in [0, 1]."""
    d2 = ((points[:, None, :] - anchors[None, :, :]) ** 2).sum(-1).min(1)
    return np.exp(-0.5 * d2 / sigma**2)


def _template_frame(points_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation R_model_from_cam (3, 3) and centre (3,) of the model frame for 468 camera-frame points."""
    x = points_cam[_MP_LEFT_EYE_OUTER] - points_cam[_MP_RIGHT_EYE_OUTER]
    y = points_cam[_MP_FOREHEAD] - points_cam[_MP_CHIN]
    x = x / np.linalg.norm(x)
    y = y - x * (x @ y)
    y = y / np.linalg.norm(y)
    z = np.cross(x, y)
    r = np.stack([x, y, z])  # rows: model axes in camera coordinates
    return r, points_cam.mean(0)


class TemplateModel(FaceModel):
    """A subject template from MediaPipe's 468-point mesh lifted by depth (no licensed file)."""

    @classmethod
    def from_points(
        cls,
        points_cam: np.ndarray,
        valid: np.ndarray | None = None,
        subdivisions: int = 2,
    ) -> tuple["TemplateModel", np.ndarray, np.ndarray]:
        """Build the template from 468 MediaPipe points in a camera frame.

        Args:
            points_cam: float (468, 3) metres (extra iris rows 468..477 are ignored), OpenCV camera
                frame of the face that looks roughly at that camera.
            valid: bool (468,) rows with a measured position; the others are filled by harmonic
                interpolation over the mesh (the forehead under hair, a silhouette point whose
                depth pixel hit the background). At least 60 % must be valid.
            subdivisions: midpoint subdivision levels (0: 468 vertices; 1: 1,790; 2: 6,996).
        Returns:
            (model, R_cam_from_model (3, 3), t_cam_from_model (3,)): the pose that puts the
            template back where the points were, a natural start for the fitter.
        Raises:
            ValueError: too few valid points or a degenerate configuration.
        """
        from mmface4d_stream.face.topology import N_FACEMESH_POINTS, mediapipe_triangles

        pts = np.asarray(points_cam, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 3 or pts.shape[0] < N_FACEMESH_POINTS:
            raise ValueError(f"points_cam must be (468, 3) or (478, 3), got {pts.shape}")
        pts = pts[:N_FACEMESH_POINTS]
        valid = np.isfinite(pts).all(1) if valid is None else (np.asarray(valid, bool)[:N_FACEMESH_POINTS] & np.isfinite(pts).all(1))
        if valid.mean() < 0.6:
            raise ValueError(f"only {valid.sum()} of 468 template points have depth (need 60 %)")
        if subdivisions < 0:
            raise ValueError(f"subdivisions must be >= 0, got {subdivisions}")
        tris_cam = mediapipe_triangles().astype(np.int64)
        pts = np.where(valid[:, None], pts, 0.0)
        pts = _harmonic_fill(pts, valid, mesh_edges(tris_cam))
        r_model_from_cam, centre = _template_frame(pts)
        base = (pts - centre) @ r_model_from_cam.T
        # The jaw's weight is defined on the 468 points and subdivided with them (a midpoint gets
        # the mean of its edge's ends), so it follows the mesh's topology across the lip opening.
        dense, tris = np.concatenate([base, _jaw_weight(base)[:, None]], axis=1), tris_cam
        for _ in range(subdivisions):
            dense, tris, _edges = subdivide_midpoint(dense, tris)
        verts, jaw_weight = dense[:, :3], dense[:, 3]
        n = len(verts)
        id_basis = np.stack([verts * np.eye(3)[k] * 0.05 for k in range(3)], axis=2)
        exp_basis = _procedural_expressions(verts, base, jaw_weight)
        lm = np.arange(N_FACEMESH_POINTS, dtype=np.int64)
        model = cls(
            name="template",
            mean_shape=verts.astype(np.float32),
            id_basis=id_basis.astype(np.float32),
            exp_basis=exp_basis.astype(np.float32),
            triangles=tris,
            landmark_detector_index=lm,
            landmark_vertex=lm,
            id_names=_ID_NAMES,
            exp_names=_EXPRESSION_NAMES,
        )
        logger.info("built template model: %d vertices, %d triangles (%d of 468 points measured)",
                    n, len(tris), int(valid.sum()))
        return model, r_model_from_cam.T.copy(), centre.copy()


def _face_scale(base: np.ndarray) -> float:
    """Size of the face (468, 3) relative to a 9 cm distance between the outer eye corners."""
    return float(np.linalg.norm(base[_MP_LEFT_EYE_OUTER] - base[_MP_RIGHT_EYE_OUTER])) / 0.09


def _jaw_weight(base: np.ndarray) -> np.ndarray:
    """How much of the jaw's rotation each of the 468 model-frame points (468, 3) follows: (468,) in [0, 1].

    A smooth step (logistic, 6 mm scale) below the mouth's centre line, except on the lips
    themselves: the upper lip's points get 0 and the lower lip's 1. The lip opening is a hole in
    MediaPipe's mesh, so the two lips are neighbours only at the corners; the logistic alone gave
    the upper lip ~30 % of the jaw's motion (its inner edge lies ~5 mm above the centre line when
    the template's mouth is parted), which dragged it down and back with every opening.
    """
    mouth_c = 0.5 * (base[_MP_UPPER_LIP_INNER] + base[_MP_LOWER_LIP_INNER])
    w = 1.0 / (1.0 + np.exp(-(mouth_c[1] - base[:, 1]) / (0.006 * _face_scale(base))))
    w[list(_MP_UPPER_LIP)] = 0.0
    w[list(_MP_LOWER_LIP)] = 1.0
    return w


def _procedural_expressions(verts: np.ndarray, base: np.ndarray, jaw_weight: np.ndarray) -> np.ndarray:
    """(N, 3, 12) displacement fields (metres per unit) for `_EXPRESSION_NAMES` on model-frame verts.

    `base` are the 468 model-frame MediaPipe points, used to place the regions; `jaw_weight` (N,)
    in [0, 1] is the share of the jaw's rotation each vertex follows (`_jaw_weight`, subdivided).
    """
    p = base
    s = _face_scale(base)  # scale region sizes with the face
    mouth_c = 0.5 * (p[_MP_UPPER_LIP_INNER] + p[_MP_LOWER_LIP_INNER])
    modes = []
    y = verts[:, 1]
    # jaw_open: rotate what lies below the mouth about an axis behind the face at ear height.
    below = jaw_weight
    pivot = np.array([0.0, mouth_c[1] + 0.03 * s, mouth_c[2] - 0.09 * s])
    rel = verts - pivot
    rot_x = np.stack([np.zeros_like(y), -rel[:, 2], rel[:, 1]], 1)  # d/dθ of a rotation about +x
    modes.append(rot_x * below[:, None] * (0.01 / (0.1 * s)))  # +θ opens: chin down and back; ~1 cm
    lips = np.array([p[i] for i in _MP_UPPER_LIP + _MP_LOWER_LIP])
    w_lips = _falloff(verts, lips, 0.008 * s)
    w_up = _falloff(verts, np.array([p[i] for i in _MP_UPPER_LIP]), 0.006 * s)
    w_low = _falloff(verts, np.array([p[i] for i in _MP_LOWER_LIP]), 0.006 * s)
    # lips_part: upper lip up, lower lip down.
    modes.append(np.stack([0 * y, 0.006 * (w_up - w_low), 0 * y], 1))
    dx = verts[:, 0] - mouth_c[0]
    # mouth_wide: stretch horizontally about the mouth centre.
    modes.append(np.stack([w_lips * np.clip(dx / (0.025 * s), -1.5, 1.5) * 0.006, 0 * y, 0 * y], 1))
    # pucker: lips forward and narrower.
    modes.append(np.stack([-w_lips * np.clip(dx / (0.025 * s), -1.5, 1.5) * 0.004, 0 * y, w_lips * 0.008], 1))
    corners = np.array([p[_MP_MOUTH_RIGHT], p[_MP_MOUTH_LEFT]])
    w_corner = _falloff(verts, corners, 0.01 * s)
    # smile / frown: mouth corners up and back / down.
    modes.append(np.stack([np.sign(dx) * w_corner * 0.003, w_corner * 0.008, -w_corner * 0.003], 1))
    modes.append(np.stack([0 * y, -w_corner * 0.008, 0 * y], 1))
    for brow in (_MP_RIGHT_BROW, _MP_LEFT_BROW):
        w = _falloff(verts, np.array([p[i] for i in brow]), 0.012 * s)
        modes.append(np.stack([0 * y, w * 0.005, 0 * y], 1))
    for upper, lower in ((_MP_RIGHT_UPPER_LID, _MP_RIGHT_LOWER_LID), (_MP_LEFT_UPPER_LID, _MP_LEFT_LOWER_LID)):
        w = _falloff(verts, np.array([p[i] for i in upper]), 0.003 * s)
        gap = np.mean([p[i] for i in upper], 0)[1] - np.mean([p[i] for i in lower], 0)[1]
        modes.append(np.stack([0 * y, -w * max(gap, 0.003) * 0.5, 0 * y], 1))
    cheeks = np.array([p[_MP_RIGHT_CHEEK], p[_MP_LEFT_CHEEK]])
    modes.append(np.stack([0 * y, 0 * y, _falloff(verts, cheeks, 0.015 * s) * 0.008], 1))
    modes.append(np.stack([0 * y, w_up * 0.005, w_up * 0.002], 1))
    return np.stack(modes, axis=2)
