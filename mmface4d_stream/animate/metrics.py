"""The field's metrics for speech-driven 3D faces, in millimetres.

- LVE, lip vertex error: per frame, the largest L2 distance between predicted and true lip
  vertices; averaged over all frames (MeshTalk, Richard et al., ICCV 2021; FaceFormer, Fan et
  al., CVPR 2022).
- FDD, upper-face dynamics deviation: per upper-face vertex, the standard deviation over a
  sequence's frames of its distance from the neutral face, true vs predicted; the absolute
  difference, averaged over the vertices, then over sequences weighted by their frames (after
  CodeTalker, Xing et al., CVPR 2023, which takes the signed difference; the absolute value keeps
  over- and under-animation from cancelling).

Both compare meshes in one frame (the model's aligned frame), with vertices in metres.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MetricAccumulator", "MotionMetrics", "lip_vertex_error", "upper_face_dynamics_deviation"]

MM = 1000.0


@dataclass(frozen=True)
class MotionMetrics:
    """lve_mm, fdd_mm: see the module docstring; frames and sequences they cover."""

    lve_mm: float
    fdd_mm: float
    frames: int
    sequences: int

    def to_json(self) -> dict:
        return {"lve_mm": round(self.lve_mm, 4), "fdd": round(self.fdd_mm, 4), "frames": self.frames,
                "sequences": self.sequences}


def lip_vertex_error(pred: np.ndarray, true: np.ndarray, lips: np.ndarray) -> np.ndarray:
    """Per-frame LVE (T,) millimetres of meshes (T, V, 3) metres."""
    d = np.linalg.norm(pred[:, lips] - true[:, lips], axis=-1)
    return d.max(axis=1) * MM


def upper_face_dynamics_deviation(pred: np.ndarray, true: np.ndarray, neutral: np.ndarray,
                                  upper: np.ndarray) -> float:
    """FDD (mm) of one sequence: meshes (T, V, 3) metres, the neutral face (V, 3)."""
    dyn_true = np.linalg.norm(true[:, upper] - neutral[upper], axis=-1).std(axis=0)
    dyn_pred = np.linalg.norm(pred[:, upper] - neutral[upper], axis=-1).std(axis=0)
    return float(np.abs(dyn_true - dyn_pred).mean() * MM)


class MetricAccumulator:
    """Adds up LVE and FDD over sequences: `add(pred, true, neutral)` per sequence, `result()` at the end."""

    def __init__(self, lips: np.ndarray, upper: np.ndarray):
        self.lips, self.upper = lips, upper
        self._lve_sum = 0.0
        self._fdd_sum = 0.0
        self._frames = 0
        self._sequences = 0

    def add(self, pred: np.ndarray, true: np.ndarray, neutral: np.ndarray) -> None:
        if pred.shape != true.shape:
            raise ValueError(f"prediction {pred.shape} and truth {true.shape} differ in shape")
        self._lve_sum += float(lip_vertex_error(pred, true, self.lips).sum())
        self._fdd_sum += upper_face_dynamics_deviation(pred, true, neutral, self.upper) * len(pred)
        self._frames += len(pred)
        self._sequences += 1

    def result(self) -> MotionMetrics:
        n = max(self._frames, 1)
        return MotionMetrics(self._lve_sum / n, self._fdd_sum / n, self._frames, self._sequences)
