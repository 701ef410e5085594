"""Face regions of a mesh topology: the lips (for LVE) and the upper face (for FDD and alignment).

Regions are found from a few anchor vertices whose meaning is known, the MediaPipe FaceMesh lip
outline and eye corners, and the geometry of a reference (neutral) mesh, so they work for any
topology that has such anchors:

- meshes whose vertices 0..467 are MediaPipe's 468 FaceMesh points (MediaPipe meshes, the
  project's template model and synthetic subject): the anchors are those vertices;
- other topologies (the BFM): an upstream `landmark_mapping2.json` (`{region: [[mediapipe_index,
  vertex], ...]}`) maps regions whose name contains "lip" to lip anchors and "eye" (not "brow")
  to eye anchors.

On the reference mesh, "up" points from the lip anchors' centre to the eye anchors' centre and
"across" from one eye to the other. The lips are the vertices inside the outline of the lip
anchors in the face plane, widened by 15 %; the upper face is every vertex higher than the eye
anchors' centre minus a quarter of the eye-to-mouth distance (eyes, brows, forehead, nose bridge).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmface4d_stream.errors import InputError

__all__ = ["FaceRegions", "RegionAnchors", "anchors_for", "face_regions", "load_regions"]

N_FACEMESH_POINTS = 468
# FaceMesh outer lip outline (20 points) and eye corners; facts of MediaPipe's canonical mesh.
MEDIAPIPE_OUTER_LIP = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
MEDIAPIPE_EYE_CORNERS = (33, 133, 263, 362)
LIP_WIDENING = 1.15
UPPER_FACE_BELOW_EYES = 0.25


@dataclass(frozen=True)
class RegionAnchors:
    """Vertex ids (int64) of the lip outline and the eye corners/contours of a topology."""

    lips: np.ndarray
    eyes: np.ndarray


@dataclass(frozen=True)
class FaceRegions:
    """Vertex ids of a topology's regions, sorted int64.

    lips: lip vertices (LVE). upper_face: eyes, brows, forehead, nose bridge (FDD, rigid alignment).
    """

    lips: np.ndarray
    upper_face: np.ndarray

    def to_json(self) -> dict:
        return {"lips": self.lips.tolist(), "upper_face": self.upper_face.tolist()}


def anchors_for(n_vertices: int, landmark_mapping: str | os.PathLike | None = None) -> RegionAnchors:
    """Anchors of a topology of `n_vertices` (see the module docstring); raises InputError when none are known."""
    if landmark_mapping is not None:
        return _anchors_from_mapping(Path(landmark_mapping), n_vertices)
    from mmface4d_stream.render.visualize import BFM_VERTICES

    if n_vertices == BFM_VERTICES or n_vertices < N_FACEMESH_POINTS:
        raise InputError(f"no lip/eye anchors known for {n_vertices}-vertex meshes: pass --landmark-mapping "
                         "(an upstream landmark_mapping2.json) or --regions")
    return RegionAnchors(np.array(MEDIAPIPE_OUTER_LIP, dtype=np.int64), np.array(MEDIAPIPE_EYE_CORNERS, dtype=np.int64))


def _anchors_from_mapping(path: Path, n_vertices: int) -> RegionAnchors:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError("landmark mapping file not found", path) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the landmark mapping as JSON ({exc})", path) from None
    if not isinstance(data, dict):
        raise InputError("a landmark mapping must be a JSON object {region: [[mediapipe_index, vertex], ...]}", path)
    lips, eyes = [], []
    for region, pairs in data.items():
        try:
            vertices = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)[:, 1]
        except (TypeError, ValueError):
            raise InputError(f"region {region!r} must be a list of [mediapipe_index, vertex] pairs", path) from None
        name = region.lower()
        if "lip" in name:
            lips.append(vertices)
        elif "eye" in name and "brow" not in name:
            eyes.append(vertices)
    if not lips or not eyes:
        raise InputError("the landmark mapping needs regions named *lip* and *eye*", path)
    lip_ids, eye_ids = np.unique(np.concatenate(lips)), np.unique(np.concatenate(eyes))
    if max(lip_ids.max(), eye_ids.max()) >= n_vertices:
        raise InputError(f"the landmark mapping names vertices beyond the mesh's {n_vertices}", path)
    return RegionAnchors(lip_ids, eye_ids)


def face_regions(reference: np.ndarray, anchors: RegionAnchors) -> FaceRegions:
    """Lips and upper face of a neutral mesh `reference` (N, 3), any units and pose."""
    v = np.asarray(reference, dtype=np.float64)
    lips_c = v[anchors.lips].mean(0)
    eyes_c = v[anchors.eyes].mean(0)
    up = eyes_c - lips_c
    height = float(np.linalg.norm(up))
    if height <= 0:
        raise InputError("lip and eye anchors coincide: not a face mesh")
    up /= height
    eye_pts = v[anchors.eyes] - eyes_c
    spread = eye_pts - np.outer(eye_pts @ up, up)
    _, _, vt = np.linalg.svd(spread, full_matrices=False)
    across = vt[0] - (vt[0] @ up) * up
    across /= np.linalg.norm(across)
    plane = np.stack([v @ across, v @ up], 1)
    outline = plane[anchors.lips]
    centre = outline.mean(0)
    widened = centre + LIP_WIDENING * (outline - centre)
    from scipy.spatial import Delaunay

    try:
        hull = Delaunay(widened)
    except Exception as exc:  # degenerate (collinear) outline
        raise InputError(f"lip anchors do not span an outline ({exc})") from None
    lips = np.flatnonzero(hull.find_simplex(plane) >= 0)
    eye_height = float(eyes_c @ up)
    upper = np.flatnonzero(plane[:, 1] >= eye_height - UPPER_FACE_BELOW_EYES * height)
    if len(lips) < 3 or len(upper) < 3:
        raise InputError(f"found {len(lips)} lip and {len(upper)} upper-face vertices: "
                         "the anchors do not fit this mesh")
    return FaceRegions(lips.astype(np.int64), upper.astype(np.int64))


def load_regions(path: str | os.PathLike, n_vertices: int) -> FaceRegions:
    """Read `{"lips": [...], "upper_face": [...]}` vertex ids from a JSON file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        lips = np.unique(np.asarray(data["lips"], dtype=np.int64))
        upper = np.unique(np.asarray(data["upper_face"], dtype=np.int64))
    except FileNotFoundError:
        raise InputError("regions file not found", path) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"expected JSON {{\"lips\": [ids], \"upper_face\": [ids]}} ({exc})", path) from None
    for name, ids in (("lips", lips), ("upper_face", upper)):
        if len(ids) < 3 or ids.min() < 0 or ids.max() >= n_vertices:
            raise InputError(f"{name} must list at least 3 vertex ids in 0..{n_vertices - 1}", path)
    return FaceRegions(lips, upper)
