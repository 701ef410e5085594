"""Per-landmark weights of the landmark term: MediaPipe's lower-face points count less.

`landmark_weights(model, lower_face_weight)` gives each of a model's landmarks a weight that the
fitter multiplies into the detector's confidences (`frame_prep.prepare_cameras`), in the LM solve
and the offset step alike.
"""

from __future__ import annotations

import functools

import numpy as np

from mmface4d_stream.face.topology import MOUTH_CORNERS

__all__ = ["landmark_weights", "face_oval_points", "LOWER_FACE_MARGIN_M"]

# How far above the mouth corners (`face.topology.MOUTH_CORNERS`) the lower face begins (metres).
LOWER_FACE_MARGIN_M = 0.012


def landmark_weights(model, lower_face_weight: float) -> np.ndarray:
    """Per-landmark weight (L,) float64 of `model` (a `face.models.FaceModel`): `lower_face_weight` on
    the lower face, 1 elsewhere.

    The lower face is the landmarks whose mean-shape vertex lies below a line `LOWER_FACE_MARGIN_M`
    above the mouth corners (model frame, y up): both lips and the skin around them down to the
    chin, except the face's outline (the outer boundary of MediaPipe's mesh, `face_oval_points`),
    which keeps weight 1: depth hardly places the border of the face, the landmarks do.
    MediaPipe places the lower face's points with a bias that grows with the mouth's opening (on
    the synthetic capture, 3 cameras: the upper lip's points ~3 px too low and the chin's 4-8 px
    too high with the jaw open, under 1 px closed), which the fitter follows by opening the lips
    rather than the jaw and dragging the upper lip down; weighting them down leaves the mouth's
    shape to the depth terms. A model without both corner points among its landmarks gets weight
    1 everywhere.
    """
    det = np.asarray(model.landmark_detector_index)
    weights = np.ones(len(det))
    corners = [np.flatnonzero(det == k) for k in MOUTH_CORNERS]
    if lower_face_weight == 1.0 or any(len(c) == 0 for c in corners):
        return weights
    y = np.asarray(model.mean_shape, dtype=np.float64)[np.asarray(model.landmark_vertex), 1]
    line = np.mean([y[c[0]] for c in corners]) + LOWER_FACE_MARGIN_M
    weights[(y < line) & ~np.isin(det, face_oval_points())] = float(lower_face_weight)
    return weights


@functools.lru_cache(maxsize=1)
def face_oval_points() -> np.ndarray:
    """FaceMesh point ids (int64, 36) of the outer boundary of MediaPipe's face mesh, in order."""
    from mmface4d_stream.face.topology import mediapipe_triangles
    from mmface4d_stream.render.mesh_ops import boundary_loops

    oval = np.asarray(max(boundary_loops(mediapipe_triangles()), key=len), dtype=np.int64)
    oval.setflags(write=False)  # shared by the cache
    return oval
