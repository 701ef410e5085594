"""The sample subject: a textured 3D head built at run time from `skimage.data.astronaut()`.

Nothing licensed is shipped: the portrait (a public-domain NASA photograph) comes with
scikit-image, the geometry from MediaPipe FaceMesh's 478 landmarks on it, the triangles from
MediaPipe's own `FACEMESH_TESSELATION` (via `mmface4d_stream.face.topology`).

Construction (`sample_subject`):
1. FaceMesh landmarks on the portrait give x, y (pixels) and a relative depth z (pixels, scaled
   like x); scaled so that the face is `FACE_WIDTH_M` (14 cm) wide between MediaPipe points 234 and
   454, they form the control mesh in metres. The eye holes are closed by fans around a centre
   vertex (textured with the iris); the mouth hole gets a separate dark cavity (a cone 15 mm deep).
2. Loop subdivision (Loop 1987), `subdivisions` times, gives a smooth dense surface (7.3 k face
   vertices for 2 levels). Subdivision is linear, so it is a fixed sparse matrix applied to the
   deformed control mesh every frame. Subdivision keeps a vertex's index: vertices 0..467 of the
   dense face are MediaPipe's 468 points (moved onto the smooth surface).
3. A skull and neck extend the face's outer boundary to the back of the head (rigid, coloured
   with hair and skin tones sampled from the portrait), so that side views show a plausible
   silhouette instead of a mask.

Frames: the head frame has x right, y down, z away from the viewer (the face looks towards -z),
origin at the head's centre of rotation ~10 cm behind the nose tip; metres throughout. The
performance (`render.performance.Performance`) deforms the control mesh (jaw, lips, smile, blinks, brows) and moves
the head rigidly; it is deterministic for a seed.

Reference: C. Loop, "Smooth subdivision surfaces based on triangles", MSc thesis, University of
Utah, 1987.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import scipy.sparse

from mmface4d_stream.face.topology import MOUTH_CORNERS
from mmface4d_stream.geometry import so3_exp
from mmface4d_stream.render.mesh_ops import boundary_loops, loop_subdivision_matrix

logger = logging.getLogger(__name__)

__all__ = [
    "FACE_WIDTH_M",
    "SubjectModel",
    "Expression",
    "sample_subject",
]

FACE_WIDTH_M = 0.14
"""Distance between MediaPipe points 234 and 454 (the face's outline at the cheekbones), metres."""

NOSE_TIP = 1
HEAD_CENTRE_BEHIND_NOSE_M = 0.10

# MediaPipe FaceMesh point indices used by the performance rig.
_LIP_UPPER = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]
_LIP_LOWER = [146, 91, 181, 84, 17, 314, 405, 321, 375, 95, 88, 178, 87, 14, 317, 402, 318, 324]
_EYES = (
    # (upper lid from outer to inner corner, lower lid from outer to inner corner)
    ([33, 246, 161, 160, 159, 158, 157, 173, 133], [33, 7, 163, 144, 145, 153, 154, 155, 133]),
    ([263, 466, 388, 387, 386, 385, 384, 398, 362], [263, 249, 390, 373, 374, 380, 381, 382, 362]),
)
_IRIS_CENTRES = (468, 473)
_BROWS = ([70, 63, 105, 66, 107, 46, 53, 52, 65, 55], [300, 293, 334, 296, 336, 276, 283, 282, 295, 285])
_CHEEKS = (50, 280)
_BAND_COLOURS = ("skin", "hair", "backdrop")
_TEXTURE_BAND_PX = 24


def _smoothstep(x, edge0, edge1):
    t = np.clip((np.asarray(x, dtype=np.float64) - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


class Expression(NamedTuple):
    """Expression parameters of one frame (unitless, 0 = the portrait's neutral face).

    jaw: mouth opening in [0, 1] (1 = jaw rotated 14 degrees). pucker: lip rounding in [0, 1].
    smile: in [0, 1]. blink: eyelid closure in [0, 1] (1 = closed). brow: brow raise in [0, 1].
    """

    jaw: float = 0.0
    pucker: float = 0.0
    smile: float = 0.0
    blink: float = 0.0
    brow: float = 0.0


@dataclass(frozen=True)
class SubjectModel:
    """A textured head with a deformable face, in the head frame (metres, see the module docstring).

    Vertex layout: [dense face (n_face_vertices, the ground-truth surface) | mouth cavity | skull and
    neck]. Only the face part deforms; cavity follows the lips; skull and neck are rigid.

    Attributes:
        faces: (F, 3) int32, all triangles, wound so that normals point out of the head.
        face_faces: (Ff, 3) int32, the triangles of the face part only (indices < n_face_vertices).
        uv: (N, 2) float32 texture coordinates (OpenGL: v = 1 at the texture's top row).
        texture: (h, w, 3) uint8 RGB: the portrait with a band of flat colours below it (`band_uv`).
        n_face_vertices: number of leading vertices that form the face surface.
        rest_vertices: (N, 3) float32 neutral pose, head frame, metres.
        landmarks_px: (478, 2) float32 FaceMesh points on the portrait, pixels.
    """

    faces: np.ndarray
    face_faces: np.ndarray
    uv: np.ndarray
    texture: np.ndarray
    n_face_vertices: int
    rest_vertices: np.ndarray
    landmarks_px: np.ndarray
    _control_rest: np.ndarray  # (Nc, 3) control points of the face (468 MediaPipe + 2 eye centres)
    _face_subdivision: scipy.sparse.csr_matrix  # (n_face_vertices, Nc)
    _cavity_subdivision: scipy.sparse.csr_matrix  # (n_cavity, n_loop + 1)
    _mouth_loop: np.ndarray  # control ids of the inner lip loop
    _outer_boundary: np.ndarray  # dense face ids of the outer boundary loop (copied by the skull)
    _rig: dict

    @property
    def n_vertices(self) -> int:
        return len(self.rest_vertices)

    def band_uv(self, colour: str) -> np.ndarray:
        """Texture coordinates (2,) float32 of a flat colour of the texture's band:
        "skin", "hair" (sampled from the portrait) or "backdrop" (light grey, for scene props)."""
        if colour not in _BAND_COLOURS:
            raise ValueError(f"colour must be one of {_BAND_COLOURS}, got {colour!r}")
        h, w = self.texture.shape[:2]
        width = w // len(_BAND_COLOURS)
        i = _BAND_COLOURS.index(colour)
        return np.array([(i + 0.5) * width / w, 0.5 * _TEXTURE_BAND_PX / h], dtype=np.float32)

    def vertices(self, expression: Expression = Expression(), rotation: np.ndarray | None = None,
                 translation: np.ndarray | None = None) -> np.ndarray:
        """All vertices for an expression and a rigid head pose.

        Args:
            expression: `Expression`.
            rotation: (3,) rotation vector (radians) or (3, 3) matrix, head frame -> output frame.
            translation: (3,) metres, where the head frame's origin lands.
        Returns:
            (N, 3) float32 metres: R @ v + t for every vertex.
        """
        control = self._deform_control(expression)
        face = self._face_subdivision @ control
        loop = control[self._mouth_loop]
        centre = loop.mean(0) + np.array([0.0, 0.0, 0.015])
        cavity = self._cavity_subdivision @ np.concatenate([loop, centre[None]])
        rigid = self.rest_vertices[self.n_face_vertices + len(cavity):].astype(np.float64)
        rigid[: len(self._outer_boundary)] = face[self._outer_boundary]
        v = np.concatenate([face, cavity, rigid])
        if rotation is not None:
            R = np.asarray(rotation, dtype=np.float64)
            R = so3_exp(R) if R.shape == (3,) else R
            v = v @ R.T
        if translation is not None:
            v = v + np.asarray(translation, dtype=np.float64)
        return v.astype(np.float32)

    def _deform_control(self, e: Expression) -> np.ndarray:
        rig = self._rig
        p = self._control_rest.astype(np.float64).copy()
        # Jaw: lower face rotates about the jaw axis (x axis through the temporomandibular joints).
        if e.jaw:
            angle = math.radians(14.0) * float(e.jaw)
            c, s = math.cos(angle), math.sin(angle)
            rel = p - rig["jaw_pivot"]
            # Opening rotates the chin down and back: +angle about x with y down, z back.
            rot = np.stack([rel[:, 0], c * rel[:, 1] - s * rel[:, 2], s * rel[:, 1] + c * rel[:, 2]], 1)
            p += rig["w_jaw"][:, None] * (rot - rel)
        if e.pucker:
            p += float(e.pucker) * rig["d_pucker"]
        if e.smile:
            p += float(e.smile) * rig["d_smile"]
        if e.brow:
            p += float(e.brow) * rig["d_brow"]
        if e.blink:
            p[:, 1] += float(e.blink) * rig["d_blink_y"]
        return p


def _gauss(d2: np.ndarray, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * d2 / (sigma * sigma))


def _build_rig(p: np.ndarray) -> dict:
    """Displacement fields of the performance on the control points p (Nc, 3), head frame."""
    n = len(p)
    corners = p[list(MOUTH_CORNERS)]
    mouth_centre = p[[13, 14]].mean(0)
    y_mouth = corners[:, 1].mean()

    # Jaw weight: 1 on the lower lip and below the mouth, 0 on the upper lip and above.
    w = _smoothstep(p[:, 1], y_mouth - 0.004, y_mouth + 0.010)
    w[_LIP_UPPER] = 0.0
    w[_LIP_LOWER] = 1.0
    w[list(MOUTH_CORNERS) + [78, 308]] = 0.5
    # Far to the sides (behind the jaw angle) the skin barely follows the jaw.
    w *= 1.0 - 0.6 * _smoothstep(np.abs(p[:, 0]), 0.045, 0.07)
    eye_y = np.mean([p[_EYES[0][0], 1].mean(), p[_EYES[1][0], 1].mean()])
    jaw_pivot = np.array([0.0, eye_y + 0.03, 0.0])

    d_mouth = np.sum((p - mouth_centre) ** 2, axis=1)
    d_pucker = np.zeros_like(p)
    near_mouth = _gauss(d_mouth, 0.018)
    d_pucker[:, 0] = -(p[:, 0] - mouth_centre[0]) * 0.35 * near_mouth  # corners move in
    d_pucker[:, 2] = -0.004 * near_mouth  # lips push forward

    d_smile = np.zeros_like(p)
    for side, corner in zip((-1.0, 1.0), corners):
        side = np.sign(corner[0] - mouth_centre[0]) or side
        g = _gauss(np.sum((p - corner) ** 2, axis=1), 0.013)
        d_smile[:, 0] += side * 0.005 * g
        d_smile[:, 1] += -0.005 * g
        d_smile[:, 2] += 0.002 * g
    for cheek in _CHEEKS:
        g = _gauss(np.sum((p - p[cheek]) ** 2, axis=1), 0.018)
        d_smile[:, 1] += -0.003 * g
        d_smile[:, 2] += -0.0015 * g

    d_brow = np.zeros_like(p)
    for brow in _BROWS:
        b = p[brow]
        d2 = np.min(np.sum((p[:, None, :] - b[None]) ** 2, axis=2), axis=1)
        g = _gauss(d2, 0.011)
        # Only what lies above the brows' lower edge moves (the eyes stay).
        g *= 1.0 - _smoothstep(p[:, 1], b[:, 1].max() - 0.002, b[:, 1].max() + 0.006)
        d_brow[:, 1] += -0.006 * g

    # Blink: the upper lid slides down onto the lower lid; the skin above follows, decaying.
    d_blink_y = np.zeros(n)
    for upper, lower in _EYES:
        xu, yu = p[upper, 0], p[upper, 1]
        xl, yl = p[lower, 0], p[lower, 1]
        ou, ol = np.argsort(xu), np.argsort(xl)
        x = p[:, 0]
        inside_x = (x > min(xu.min(), xl.min())) & (x < max(xu.max(), xl.max()))
        U = np.interp(x, xu[ou], yu[ou])
        L = np.interp(x, xl[ol], yl[ol])
        gap = np.maximum(L - U, 0.0)
        y = p[:, 1]
        # Restrict to the eye's neighbourhood in depth and height.
        near = inside_x & (np.abs(p[:, 2] - p[upper, 2].mean()) < 0.02) & (y > U - 0.02) & (y < L + 1e-4)
        # The lid overshoots slightly: subdivision smooths the lid margin towards the skin above.
        above = np.where(y <= U, 1.15 * gap * np.exp(-(((U - y) / 0.008) ** 2)), 0.0)
        between = np.where((y > U) & (y < L), L - y, 0.0)
        d_blink_y += np.where(near, above + between, 0.0)
    return dict(jaw_pivot=jaw_pivot, w_jaw=w, d_pucker=d_pucker, d_smile=d_smile, d_brow=d_brow, d_blink_y=d_blink_y)


def _detect_portrait_landmarks(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from mmface4d_stream.face.landmarks import FaceLandmarker

    with FaceLandmarker() as landmarker:
        result = landmarker.process(image)
    if not result.found:
        raise RuntimeError("MediaPipe found no face in skimage.data.astronaut(); the sample subject cannot be built")
    return result.points_px.astype(np.float64), result.z.astype(np.float64)


def _clean_mediapipe_triangles() -> np.ndarray:
    from mmface4d_stream.face.topology import mediapipe_triangles

    tris = mediapipe_triangles().astype(np.int64)
    # Drop the two triangles that overlap a fan of three others (every edge shared by 3 faces):
    # they would z-fight and make the mesh non-manifold.
    edges = np.sort(np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]]), axis=1)
    key = edges[:, 0] * 1000 + edges[:, 1]
    _, inv, counts = np.unique(key, return_inverse=True, return_counts=True)
    per_face = counts[inv].reshape(3, -1).T
    return tris[~np.all(per_face > 2, axis=1)]


def _fan(loop: np.ndarray, centre: int, outward_like: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Triangles (loop[i], loop[i+1], centre), flipped if needed to wind like `outward_like`."""
    tris = np.stack([loop, np.roll(loop, -1), np.full(len(loop), centre)], 1)
    a, b, c = positions[tris[:, 0]], positions[tris[:, 1]], positions[tris[:, 2]]
    normal = np.cross(b - a, c - a).sum(0)
    if normal @ outward_like < 0:
        tris = tris[:, [1, 0, 2]]
    return tris


def _skull_and_neck(boundary_pos: np.ndarray, n_offset: int, rings: int = 10):
    """Head extension from the face's outer boundary loop to the back of the skull, and a neck.

    Returns (vertices (M, 3), faces (K, 3) with ids from n_offset, colour class per vertex
    (0 skin, 1 hair)); the first len(boundary) vertices copy the boundary.
    """
    radii = np.array([0.079, 0.1, 0.1])
    centre = np.array([0.0, -0.012, 0.0])
    back = centre + np.array([0.0, 0.0, radii[2]])
    m = len(boundary_pos)
    # Ring 0 duplicates the face's boundary vertices (same positions, updated every frame) so that
    # the skull has flat-colour texture coordinates right up to the face's edge.
    verts, classes = list(boundary_pos), [0] * m
    ring_ids = [n_offset + np.arange(m)]
    for k in range(1, rings + 1):
        t = k / (rings + 1)
        ids = []
        for i in range(m):
            start = boundary_pos[i] - centre
            d0 = start / np.linalg.norm(start)
            d1 = np.array([0.0, 0.0, 1.0])
            # Spherical interpolation of the direction from the boundary to the back pole.
            omega = math.acos(float(np.clip(d0 @ d1, -1, 1)))
            if omega < 1e-6:
                d = d0
            else:
                d = (math.sin((1 - t) * omega) * d0 + math.sin(t * omega) * d1) / math.sin(omega)
            r_ell = 1.0 / np.sqrt(np.sum((d / radii) ** 2))
            r0 = np.linalg.norm(start)
            blend = _smoothstep(t, 0.0, 0.35)
            r = (1 - blend) * r0 + blend * r_ell
            pos = centre + d * r
            verts.append(pos)
            # Hair above the temples and at the back; skin at the sides and under the jaw.
            hair = pos[1] < centre[1] - 0.02 or (pos[2] > 0.02 and pos[1] < centre[1] + 0.04)
            classes.append(1 if hair else 0)
            ids.append(n_offset + len(verts) - 1)
        ring_ids.append(np.array(ids))
    verts.append(back)
    classes.append(1)
    pole = n_offset + len(verts) - 1
    faces = []
    for k in range(rings):
        a, b = ring_ids[k], ring_ids[k + 1]
        a1, b1 = np.roll(a, -1), np.roll(b, -1)
        faces += [np.stack([a, b, a1], 1), np.stack([a1, b, b1], 1)]
    last = ring_ids[-1]
    faces.append(np.stack([last, np.full(m, pole), np.roll(last, -1)], 1))

    # Neck: an open elliptic cylinder under the skull, slightly behind the jaw.
    seg, levels = 28, 6
    neck_ids = []
    for j in range(levels):
        y = centre[1] + 0.05 + 0.03 * j
        ids = []
        for i in range(seg):
            ang = 2 * math.pi * i / seg
            verts.append(np.array([0.052 * math.cos(ang), y, 0.028 + 0.048 * math.sin(ang)]))
            classes.append(0)
            ids.append(n_offset + len(verts) - 1)
        neck_ids.append(np.array(ids))
    for j in range(levels - 1):
        a, b = neck_ids[j], neck_ids[j + 1]
        a1, b1 = np.roll(a, -1), np.roll(b, -1)
        faces += [np.stack([a, a1, b], 1), np.stack([a1, b1, b], 1)]
    return np.array(verts), np.concatenate(faces).astype(np.int64), np.array(classes)


@functools.lru_cache(maxsize=4)
def sample_subject(subdivisions: int = 2) -> SubjectModel:
    """Build (once per process and level) the sample subject from the astronaut portrait.

    Args:
        subdivisions: Loop subdivision levels of the face (0..3); 2 gives 7.3 k face vertices.
    Returns:
        `SubjectModel`. Takes about a second (MediaPipe on a 512x512 image, sparse algebra).
    """
    if not 0 <= int(subdivisions) <= 3:
        raise ValueError(f"subdivisions must be 0..3, got {subdivisions}")
    import skimage.data

    image = skimage.data.astronaut()
    h, w = image.shape[:2]
    pts, z = _detect_portrait_landmarks(image)
    scale = FACE_WIDTH_M / float(np.linalg.norm(pts[234] - pts[454]))
    origin_px = (pts[234] + pts[454]) / 2.0
    control = np.empty((468 + 2, 3))
    control[:468, 0] = (pts[:468, 0] - origin_px[0]) * scale
    control[:468, 1] = (pts[:468, 1] - origin_px[1]) * scale
    control[:468, 2] = z[:468] * scale
    # Head frame origin: the centre of rotation, behind the nose tip.
    control[:468, 2] -= control[NOSE_TIP, 2] + HEAD_CENTRE_BEHIND_NOSE_M
    uv_px = np.concatenate([pts[:468], np.zeros((2, 2))])

    tris = _clean_mediapipe_triangles()
    loops = boundary_loops(tris)
    outer = max(loops, key=len)
    inner = [lp for lp in loops if lp is not outer]
    mouth = next(lp for lp in inner if 13 in lp.tolist())
    eye_loops = [lp for lp in inner if lp is not mouth]
    fills = []
    towards_viewer = np.array([0.0, 0.0, -1.0])
    for k, loop in enumerate(eye_loops):
        iris = min(_IRIS_CENTRES, key=lambda i: np.linalg.norm(pts[i] - pts[loop].mean(0)))
        cid = 468 + k
        control[cid] = control[loop].mean(0)
        uv_px[cid] = pts[iris]
        fills.append(_fan(loop, cid, towards_viewer, control))
    face_tris = np.concatenate([tris] + fills)

    # Loop subdivision of the face, as one sparse matrix from control points to dense vertices.
    S = scipy.sparse.identity(len(control), format="csr")
    dense_faces = face_tris
    n = len(control)
    for _ in range(int(subdivisions)):
        S_level, dense_faces = loop_subdivision_matrix(dense_faces, n)
        S = S_level @ S
        n = S.shape[0]
    S = S.tocsr()
    face_rest = S @ control
    n_face = S.shape[0]

    # Mouth cavity: its own copy of the inner-lip loop plus a centre 15 mm behind, dark.
    m = len(mouth)
    cav_control_faces = _fan(np.arange(m), m, -towards_viewer, np.concatenate(
        [control[mouth], (control[mouth].mean(0) + [0, 0, 0.015])[None]]))
    S_cav = scipy.sparse.identity(m + 1, format="csr")
    cav_faces = cav_control_faces
    nc = m + 1
    for _ in range(int(subdivisions)):
        S_level, cav_faces = loop_subdivision_matrix(cav_faces, nc)
        S_cav = S_level @ S_cav
        nc = S_cav.shape[0]
    S_cav = S_cav.tocsr()
    cav_rest = S_cav @ np.concatenate([control[mouth], (control[mouth].mean(0) + [0, 0, 0.015])[None]])

    # Skull and neck from the dense face's outer boundary.
    dense_loops = boundary_loops(dense_faces)
    dense_outer = max(dense_loops, key=len)
    skull, skull_faces, classes = _skull_and_neck(face_rest[dense_outer], n_face + nc)

    # Texture: the portrait plus a band of flat colours (skin, hair, mouth cavity) below it.
    band = _TEXTURE_BAND_PX
    texture = np.zeros((h + band, w, 3), dtype=np.uint8)
    texture[:h] = image
    cheek_px = np.concatenate([pts[[50, 280, 205, 425]]]).astype(int)
    skin = np.median(np.concatenate([image[y - 3 : y + 4, x - 3 : x + 4].reshape(-1, 3) for x, y in cheek_px]), 0)
    # Hair: above the forehead by a third of the face's height.
    hx = int(pts[10, 0])
    hy = int(max(pts[10, 1] - (pts[152, 1] - pts[10, 1]) / 3.0, 4))
    hair = np.median(image[hy - 4 : hy + 5, hx - 12 : hx + 13].reshape(-1, 3), 0)
    if np.abs(hair.astype(float) - skin).sum() < 60:  # not hair after all: a generic dark brown
        hair = np.array([62, 46, 36])
    colours = {"skin": skin, "hair": hair, "backdrop": np.array([196, 194, 198])}
    third = w // len(_BAND_COLOURS)
    for i, name in enumerate(_BAND_COLOURS):
        texture[h:, i * third : (i + 1) * third] = colours[name]

    def band_uv(i: int) -> tuple[float, float]:
        return ((i + 0.5) * third / w, 1.0 - (h + band / 2) / (h + band))

    uv_control = np.stack([uv_px[:, 0] / w, 1.0 - uv_px[:, 1] / (h + band)], 1)
    uv_face = S @ uv_control
    # The cavity shows the portrait's own mouth (teeth) at rest and recedes into the head as the jaw
    # opens; a dark colour would paint over the teeth of the smiling portrait.
    cav_uv_control = np.concatenate([uv_control[mouth], uv_control[mouth].mean(0)[None]])
    uv_cav = S_cav @ cav_uv_control
    uv_skull = np.array([band_uv(int(c)) for c in classes])
    # Where the skull meets the face, its first ring blends from the face texture to flat colours.
    rest = np.concatenate([face_rest, cav_rest, skull]).astype(np.float32)
    faces = np.concatenate([dense_faces, cav_faces + n_face, skull_faces]).astype(np.int32)
    uv = np.concatenate([uv_face, uv_cav, uv_skull]).astype(np.float32)
    logger.debug("sample subject: %d face vertices, %d vertices, %d triangles", n_face, len(rest), len(faces))
    return SubjectModel(
        faces=faces,
        face_faces=dense_faces.astype(np.int32),
        uv=uv,
        texture=texture,
        n_face_vertices=n_face,
        rest_vertices=rest,
        landmarks_px=pts.astype(np.float32),
        _control_rest=control,
        _face_subdivision=S,
        _cavity_subdivision=S_cav,
        _mouth_loop=mouth,
        _outer_boundary=dense_outer,
        _rig=_build_rig(control),
    )
