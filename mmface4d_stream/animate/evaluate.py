"""Evaluate a model against two baselines on the same sequences: LVE and FDD (`metrics.py`).

Baselines: `static_face`, the subject's neutral face in every frame; `mean_motion`, the neutral
face plus the training set's mean displacement in every frame. All three use the same neutral
faces, estimated from each evaluated subject's silent frames (`corpus.estimate_neutrals`), and
the same aligned ground truth. A subject seen in training speaks with its style code, others with
the mean code.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from mmface4d_stream.animate.animator import AnimationModel
from mmface4d_stream.animate.corpus import aligned_meshes, estimate_neutrals
from mmface4d_stream.animate.data import SequenceFiles, discover_sequences, read_sequence_audio
from mmface4d_stream.animate.metrics import MetricAccumulator, MotionMetrics
from mmface4d_stream.errors import InputError

__all__ = ["EvalReport", "evaluate"]


@dataclass(frozen=True)
class EvalReport:
    """Metrics of the model and both baselines, and the model's inference time per frame (ms)."""

    model: MotionMetrics
    static_face: MotionMetrics
    mean_motion: MotionMetrics
    inference_ms_per_frame: float
    sequences: int
    frames: int

    def to_json(self) -> dict:
        return {"model": self.model.to_json(), "static_face": self.static_face.to_json(),
                "mean_motion": self.mean_motion.to_json(),
                "inference_ms_per_frame": round(self.inference_ms_per_frame, 4),
                "sequences": self.sequences, "frames": self.frames}

    def table(self) -> str:
        rows = [("model", self.model), ("static face", self.static_face), ("mean motion", self.mean_motion)]
        lines = [f"{'':<12} {'LVE (mm)':>9} {'FDD (mm)':>9}"]
        lines += [f"{name:<12} {m.lve_mm:9.3f} {m.fdd_mm:9.3f}" for name, m in rows]
        lines.append(f"{self.sequences} sequences, {self.frames} frames; inference "
                     f"{self.inference_ms_per_frame:.3f} ms/frame")
        return "\n".join(lines)


def evaluate(model: AnimationModel, data_dirs: list[str | os.PathLike] | None = None,
             sequences: list[SequenceFiles] | None = None, progress: bool = True) -> EvalReport:
    """Evaluate on every sequence under `data_dirs` (or the given `sequences`)."""
    from tqdm import tqdm

    if sequences is None:
        sequences = discover_sequences(data_dirs or [])
    if sequences[0].n_vertices != model.n_vertices:
        raise InputError(f"data meshes have {sequences[0].n_vertices} vertices, the model {model.n_vertices}")
    stats = model.stats
    support = stats.regions.upper_face
    rate = model.feature_config.rate
    neutrals = estimate_neutrals(sequences, stats.reference, support, rate, progress)
    acc = {name: MetricAccumulator(stats.regions.lips, support) for name in ("model", "static", "mean")}
    mean_disp = model.displacements(stats.mean_coeffs[None])[0]
    infer_s = 0.0
    frames = 0
    for seq in tqdm(sequences, desc="evaluate", unit="seq", disable=not progress, leave=False):
        true = aligned_meshes(seq, stats.reference, support)
        neutral = neutrals[seq.subject]
        audio = read_sequence_audio(seq, rate)
        t0 = time.perf_counter()
        coeffs = model.coefficients(audio, rate, seq.subject)
        pred = neutral + model.displacements(coeffs)
        infer_s += time.perf_counter() - t0
        n = min(len(pred), len(true))
        if n == 0:
            continue
        true, pred = true[:n], pred[:n]
        acc["model"].add(pred, true, neutral)
        acc["static"].add(np.broadcast_to(neutral, true.shape), true, neutral)
        acc["mean"].add(np.broadcast_to(neutral + mean_disp, true.shape), true, neutral)
        frames += n
    if frames == 0:
        raise InputError("no frame to evaluate")
    return EvalReport(acc["model"].result(), acc["static"].result(), acc["mean"].result(),
                      infer_s * 1000.0 / frames, len(sequences), frames)
