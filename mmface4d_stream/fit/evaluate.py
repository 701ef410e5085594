"""Accuracy of a reconstructed mesh sequence against ground truth (synthetic captures).

Distances are point-to-surface (the closest point on the other mesh's triangles, Open3D's
`RaycastingScene`), in both directions: reconstructed vertices -> ground-truth surface (are the
vertices on the face?) and ground-truth face vertices -> reconstructed surface (is the face
covered?). Statistics over all frames use a fixed histogram, so memory does not grow with length.

The mouth, the hardest region (thin in depth, noisy landmarks), gets the same two distances
restricted to the lip region: vertices within `MOUTH_RADIUS_M` of either mouth corner, the
corners being the ground-truth mesh's own FaceMesh points 61 and 291 (the synthetic subject's
face vertices keep MediaPipe's numbering), region fixed on the first compared frame. Jitter is the
mean magnitude of the frame-to-frame change of vertex velocity, |x(t+1) - 2 x(t) + x(t-1)|, of
the reconstruction and of the ground truth (same units, mm per frame²): a smoother that lags or a
fitter that shakes shows in their difference.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mmface4d_stream.errors import InputError
from mmface4d_stream.face.topology import MOUTH_CORNERS
from mmface4d_stream.formats.mesh_nut import MeshNutReader

_BIN_MM = 0.01
_MAX_MM = 200.0

# The lip region's radius around the mouth corners (`face.topology.MOUTH_CORNERS`).
MOUTH_RADIUS_M = 0.035


def point_to_surface_m(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unsigned distance (P,) metres from points (P, 3) to the triangle mesh (vertices (N, 3), faces (F, 3))."""
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(np.ascontiguousarray(vertices, np.float32)),
                        o3d.core.Tensor(np.ascontiguousarray(faces, np.uint32)))
    return scene.compute_distance(o3d.core.Tensor(np.ascontiguousarray(points, np.float32))).numpy()


class DistanceStats(NamedTuple):
    """Millimetres: mean, median, 95th percentile, maximum; n distances."""

    mean_mm: float
    median_mm: float
    p95_mm: float
    max_mm: float
    n: int


class DistanceHistogram:
    """Streaming distance statistics: exact mean and max, percentiles to 0.01 mm."""

    def __init__(self) -> None:
        self.counts = np.zeros(int(_MAX_MM / _BIN_MM) + 1, dtype=np.int64)
        self.total_mm = 0.0
        self.max_mm = 0.0
        self.n = 0

    def add(self, distances_m: np.ndarray) -> None:
        mm = np.asarray(distances_m, dtype=np.float64) * 1e3
        mm = mm[np.isfinite(mm)]
        self.total_mm += float(mm.sum())
        self.max_mm = max(self.max_mm, float(mm.max(initial=0.0)))
        self.n += mm.size
        np.add.at(self.counts, np.minimum((mm / _BIN_MM).astype(np.int64), self.counts.size - 1), 1)

    def percentile(self, q: float) -> float:
        if self.n == 0:
            return float("nan")
        index = int(np.searchsorted(np.cumsum(self.counts), q / 100.0 * self.n))
        return (index + 0.5) * _BIN_MM

    def stats(self) -> DistanceStats:
        mean = self.total_mm / self.n if self.n else float("nan")
        return DistanceStats(mean, self.percentile(50), self.percentile(95), self.max_mm, self.n)


@dataclass
class SequenceError:
    """Both directions over a whole sequence, the same in the mouth region, jitter, frames compared.

    jitter_recon_mm, jitter_gt_mm: mean |x(t+1) - 2 x(t) + x(t-1)| over vertices and frames, mm.
    """

    recon_to_gt: DistanceStats
    gt_to_recon: DistanceStats
    frames: int
    mouth_recon_to_gt: DistanceStats | None = None
    mouth_gt_to_recon: DistanceStats | None = None
    jitter_recon_mm: float = float("nan")
    jitter_gt_mm: float = float("nan")

    def to_dict(self) -> dict:
        def stats(d: DistanceStats | None):
            return None if d is None else {k: round(v, 3) if isinstance(v, float) else v for k, v in d._asdict().items()}

        return {"frames": self.frames,
                "recon_to_gt_mm": stats(self.recon_to_gt), "gt_to_recon_mm": stats(self.gt_to_recon),
                "mouth_recon_to_gt_mm": stats(self.mouth_recon_to_gt),
                "mouth_gt_to_recon_mm": stats(self.mouth_gt_to_recon),
                "jitter_recon_mm": round(self.jitter_recon_mm, 4), "jitter_gt_mm": round(self.jitter_gt_mm, 4)}


class _Jitter:
    """Streaming mean of |x(t+1) - 2 x(t) + x(t-1)| (mm) over a mesh sequence; a lost or non-finite
    frame restarts the window."""

    def __init__(self) -> None:
        self.window: list[np.ndarray] = []
        self.total_mm = 0.0
        self.n = 0

    def add(self, vertices: np.ndarray) -> None:
        v = np.asarray(vertices, dtype=np.float64)
        if not np.isfinite(v).all():
            self.window = []
            return
        self.window = (self.window + [v])[-3:]
        if len(self.window) == 3:
            a = self.window[2] - 2 * self.window[1] + self.window[0]
            self.total_mm += 1e3 * float(np.linalg.norm(a, axis=1).sum())
            self.n += len(a)

    @property
    def mean_mm(self) -> float:
        return self.total_mm / self.n if self.n else float("nan")


def ground_truth_transform(gt_dir: str | os.PathLike, reference_device: int | None) -> np.ndarray:
    """4x4 taking ground-truth points (device 0 color frame) into device `reference_device`'s color frame."""
    if not reference_device:
        return np.eye(4)
    cameras = json.loads((Path(gt_dir) / "cameras.json").read_text())
    device = next((d for d in cameras["devices"] if d["index"] == reference_device), None)
    if device is None:
        raise InputError(f"no device {reference_device} in the ground truth", Path(gt_dir) / "cameras.json")
    return np.linalg.inv(np.asarray(device["T_ref_from_color"], dtype=np.float64))


def evaluate_sequence(recon_prefix: str | os.PathLike, gt_dir: str | os.PathLike,
                      reference_device: int | None = None, skip_frames: int = 0) -> SequenceError:
    """Compare `recon_prefix_{0,1,2}.nut` (+ `_faces.npy`) with `gt_dir/mesh_*.nut` (+ `faces.npy`) frame by frame.

    reference_device: the synthetic device whose color frame the reconstruction is expressed in
    (the rig's reference camera); ground truth is moved there. skip_frames: leading frames left out.
    """
    gt_dir = Path(gt_dir)
    recon_faces = np.load(f"{recon_prefix}_faces.npy")
    gt_faces = np.load(gt_dir / "faces.npy")
    transform = ground_truth_transform(gt_dir, reference_device)
    forward, backward = DistanceHistogram(), DistanceHistogram()
    mouth_forward, mouth_backward = DistanceHistogram(), DistanceHistogram()
    jitter_recon, jitter_gt = _Jitter(), _Jitter()
    n_face = int(gt_faces.max()) + 1
    mouth = None  # ground-truth vertex indices of the lip region
    frames = 0
    with MeshNutReader(recon_prefix) as recon, MeshNutReader(gt_dir / "mesh") as gt:
        if len(recon) != len(gt):
            raise InputError(f"{len(recon)} reconstructed frames but {len(gt)} ground-truth frames", recon_prefix)
        for index, (r, g) in enumerate(zip(recon, gt)):
            if index < skip_frames:
                continue
            g = g @ transform[:3, :3].T.astype(np.float32) + transform[:3, 3].astype(np.float32)
            g_face = g[:n_face]
            if mouth is None and n_face > max(MOUTH_CORNERS):
                mouth = np.flatnonzero(_near_corners(g_face, g_face[list(MOUTH_CORNERS)]))
            d_forward = point_to_surface_m(r, g, gt_faces)
            d_backward = point_to_surface_m(g_face, r, recon_faces)
            forward.add(d_forward)
            backward.add(d_backward)
            if mouth is not None:
                mouth_forward.add(d_forward[_near_corners(r, g_face[list(MOUTH_CORNERS)])])
                mouth_backward.add(d_backward[mouth])
            jitter_recon.add(r)
            jitter_gt.add(g_face)
            frames += 1
    has_mouth = mouth is not None
    return SequenceError(forward.stats(), backward.stats(), frames,
                         mouth_forward.stats() if has_mouth else None, mouth_backward.stats() if has_mouth else None,
                         jitter_recon.mean_mm, jitter_gt.mean_mm)


def _near_corners(points: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """bool (P,): points (P, 3) within MOUTH_RADIUS_M of either corner (2, 3)."""
    d = np.linalg.norm(np.asarray(points, np.float64)[:, None, :] - corners[None].astype(np.float64), axis=-1)
    return d.min(1) <= MOUTH_RADIUS_M
