"""From training meshes to targets: pose removal, neutral faces, the displacement basis.

Every frame is rigidly aligned (Kabsch on the upper-face vertices, which speech barely moves) to
a reference face, so head motion is not learned as speech. A subject's neutral face is the mean
of its aligned frames whose audio is silent (RMS under 10 % of the sequence's 95th percentile);
a subject with fewer than `MIN_SILENT_FRAMES` such frames uses the mean of all its frames. The
reference is the mean of the subjects' neutral faces (the "mean subject").

The motion basis: principal directions of the displacements `aligned frame - subject neutral`
(metres), streamed through Frequent Directions (`pca.py`), never centred, so that zero
coefficients are the neutral face. Targets are the displacements' coefficients in that basis.

Two streaming passes over the training meshes; memory holds one sequence at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from mmface4d_stream.animate.data import SequenceFiles, frame_rms, read_sequence_audio
from mmface4d_stream.animate.encoder import EncoderFeatures
from mmface4d_stream.animate.features import LogMelExtractor
from mmface4d_stream.animate.pca import FrequentDirections
from mmface4d_stream.animate.regions import FaceRegions
from mmface4d_stream.geometry import kabsch

logger = logging.getLogger(__name__)

__all__ = ["CorpusStats", "SequenceTargets", "align_frames", "compute_corpus_stats", "silent_frames",
           "estimate_neutrals", "sequence_targets", "aligned_meshes"]

SILENCE_FRACTION = 0.1
MIN_SILENT_FRAMES = 3


@dataclass
class CorpusStats:
    """What training learns from the meshes before the network.

    reference: (V, 3) float32 metres, the mean subject's neutral face (the aligned frame).
    neutrals: subject -> (V, 3) float32, each subject's neutral face aligned to `reference`.
    basis: (K, 3V) float32 orthonormal rows (displacement directions, metres).
    coeff_std: (K,) float32 per-component standard deviation of the training targets (metres).
    mean_coeffs: (K,) float32 the training set's mean displacement in the basis.
    feature_mean, feature_std: (F,) float32 feature normalization (log-mel or the audio encoder's).
    regions: lips and upper face.
    """

    reference: np.ndarray
    neutrals: dict[str, np.ndarray]
    basis: np.ndarray
    coeff_std: np.ndarray
    mean_coeffs: np.ndarray
    feature_mean: np.ndarray
    feature_std: np.ndarray
    regions: FaceRegions

    @property
    def subjects(self) -> list[str]:
        return sorted(self.neutrals)


def align_frames(frames: np.ndarray, target: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Rigidly move each frame (T, V, 3) onto `target` (V, 3) by Kabsch on the vertices `support`."""
    out = np.empty_like(frames, dtype=np.float32)
    for t, frame in enumerate(frames):
        r, tr = kabsch(frame[support], target[support])
        out[t] = frame @ r.T.astype(np.float32) + tr.astype(np.float32)
    return out


def aligned_meshes(seq: SequenceFiles, target: np.ndarray, support: np.ndarray) -> np.ndarray:
    """The sequence's usable frames aligned to `target`: float32 (T, V, 3) metres."""
    from mmface4d_stream.formats.mesh_nut import MeshNutReader

    with MeshNutReader(seq.mesh_prefix, n_vertices=seq.n_vertices, threads=1) as reader:
        frames = np.stack([f for _, f in zip(range(seq.n_frames), reader)])
    return align_frames(frames, target, support)


def silent_frames(samples: np.ndarray, n_frames: int, rate: int, fps: float) -> np.ndarray:
    """Boolean (T,): frames whose audio RMS is under `SILENCE_FRACTION` of the 95th percentile."""
    rms = frame_rms(samples, n_frames, rate, fps)
    level = float(np.percentile(rms, 95)) if len(rms) else 0.0
    return rms <= max(SILENCE_FRACTION * level, 1e-5)


def estimate_neutrals(sequences: list[SequenceFiles], target: np.ndarray, support: np.ndarray, rate: int,
                      progress: bool = False) -> dict[str, np.ndarray]:
    """Each subject's neutral face (V, 3) float32 from its silent frames, aligned to `target` (V, 3)."""
    from tqdm import tqdm

    silent_sum: dict[str, np.ndarray] = {}
    silent_n: dict[str, int] = {}
    all_sum: dict[str, np.ndarray] = {}
    all_n: dict[str, int] = {}
    for seq in tqdm(sequences, desc="neutral faces", unit="seq", disable=not progress, leave=False):
        frames = aligned_meshes(seq, target, support).astype(np.float64)
        quiet = silent_frames(read_sequence_audio(seq, rate), seq.n_frames, rate, seq.fps)
        for table, count, rows in ((silent_sum, silent_n, frames[quiet]), (all_sum, all_n, frames)):
            table[seq.subject] = table.get(seq.subject, 0.0) + rows.sum(0)
            count[seq.subject] = count.get(seq.subject, 0) + len(rows)
    neutrals = {}
    for subject in all_sum:
        if silent_n.get(subject, 0) >= MIN_SILENT_FRAMES:
            neutral = silent_sum[subject] / silent_n[subject]
        else:
            logger.warning("subject %s: %d silent frames, using its mean face as neutral", subject,
                           silent_n.get(subject, 0))
            neutral = all_sum[subject] / all_n[subject]
        neutrals[subject] = align_frames(neutral[None].astype(np.float32), target, support)[0]
    return neutrals


def compute_corpus_stats(sequences: list[SequenceFiles], regions: FaceRegions, first_frame: np.ndarray,
                         extractor: LogMelExtractor | EncoderFeatures, n_components: int, progress: bool = True,
                         keep: Callable[[SequenceFiles, SequenceTargets], None] | None = None) -> CorpusStats:
    """The two passes of the module docstring. `first_frame` (V, 3) anchors the first alignment.

    The last pass decodes every sequence's training targets; `keep(seq, targets)`, if given, gets
    each of them (they do not depend on `coeff_std`), so training need not decode them again."""
    from tqdm import tqdm

    rate = extractor.config.rate
    support = regions.upper_face
    neutrals = estimate_neutrals(sequences, first_frame, support, rate, progress)
    reference = np.mean(list(neutrals.values()), axis=0).astype(np.float32)
    neutrals = {s: align_frames(n[None].astype(np.float32), reference, support)[0] for s, n in neutrals.items()}

    dim = reference.size
    sketch = FrequentDirections(dim, n_components)
    feat_sum = feat_sq = 0.0
    feat_n = 0
    disp_sum = np.zeros(dim)
    for seq in tqdm(sequences, desc="motion basis", unit="seq", disable=not progress, leave=False):
        disp = (aligned_meshes(seq, reference, support) - neutrals[seq.subject]).reshape(seq.n_frames, -1)
        sketch.push(disp)
        disp_sum += disp.sum(0)
        with torch.no_grad():
            feats = extractor(torch.from_numpy(read_sequence_audio(seq, rate))).double().numpy()
        feat_sum = feat_sum + feats.sum(0)
        feat_sq = feat_sq + np.square(feats).sum(0)
        feat_n += len(feats)
    basis, _ = sketch.components(n_components)
    if len(basis) == 0:
        raise ValueError("the training meshes do not move: no motion to learn")
    feature_mean = feat_sum / max(feat_n, 1)
    feature_std = np.sqrt(np.maximum(feat_sq / max(feat_n, 1) - feature_mean**2, 1e-8))
    mean_coeffs = basis.astype(np.float64) @ (disp_sum / max(sketch.rows_seen, 1))
    stats = CorpusStats(reference=reference, neutrals=neutrals, basis=basis,
                        coeff_std=np.ones(len(basis), np.float32), mean_coeffs=mean_coeffs.astype(np.float32),
                        feature_mean=feature_mean.astype(np.float32), feature_std=feature_std.astype(np.float32),
                        regions=regions)
    # Component scales from the sketch would be approximate; one cheap pass over the targets is exact.
    sq = np.zeros(len(basis))
    for seq in sequences:
        targets = sequence_targets(seq, stats, extractor)
        sq += np.square(targets.coeffs.astype(np.float64)).sum(0)
        if keep is not None:
            keep(seq, targets)
    stats.coeff_std = np.sqrt(np.maximum(sq / max(sketch.rows_seen, 1), 1e-12)).astype(np.float32)
    return stats


@dataclass
class SequenceTargets:
    """Training arrays of one sequence: features (Tf, F) float32 (normalized log-mel or
    audio-encoder features on the 100 Hz grid) and
    coeffs (T, K) float32 metres (displacement coefficients of its T mesh frames)."""

    features: np.ndarray
    coeffs: np.ndarray
    subject: str

    @property
    def nbytes(self) -> int:
        return self.features.nbytes + self.coeffs.nbytes


def sequence_targets(seq: SequenceFiles, stats: CorpusStats, extractor: LogMelExtractor | EncoderFeatures,
                     neutral: np.ndarray | None = None) -> SequenceTargets:
    """Decode, align and project one sequence; normalize its features. `neutral` (V, 3) defaults to
    the subject's training neutral face."""
    neutral = stats.neutrals.get(seq.subject) if neutral is None else neutral
    if neutral is None:
        raise KeyError(f"subject {seq.subject} has no neutral face")
    aligned = aligned_meshes(seq, stats.reference, stats.regions.upper_face)
    coeffs = (aligned - neutral).reshape(seq.n_frames, -1) @ stats.basis.T
    with torch.no_grad():
        feats = extractor(torch.from_numpy(read_sequence_audio(seq, extractor.config.rate))).numpy()
    feats = (feats - stats.feature_mean) / stats.feature_std
    return SequenceTargets(feats.astype(np.float32), coeffs.astype(np.float32), seq.subject)
