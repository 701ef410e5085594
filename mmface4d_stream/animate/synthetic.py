"""A light synthetic training corpus: ground-truth face meshes and speech audio, no rendering.

The synthetic performer (`render.subject`) moves its jaw and lips with the syllables that its
speech signal (`speech_audio`) is built from, so the audio carries information about the mouth;
blinks, brows, smiles, lip rounding and head motion do not follow the audio. Each subject is the
sample face with its own shape (per-axis scale 0.9-1.1 and a smooth random bulge) and speaking
style (jaw gain 0.7-1.3). Per sequence, `seed` drives the performance and the audio.

Layout written (the MMFace4D layout that `discover_sequences` reads):

    out/<subject>/<seq>/<seq>.wav            mono 16 kHz float32
    out/<subject>/<seq>/<seq>_mesh_{0,1,2}.nut   face vertices (metres, camera frame, head pose)
    out/<subject>/<seq>/faces.npy            triangles (F, 3) int32
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mmface4d_stream.formats.audio import DATASET_RATE_HZ
from mmface4d_stream.formats.sequence import DATASET_FPS

__all__ = ["SyntheticSequence", "synthetic_sequence", "write_synthetic_corpus"]

FPS = DATASET_FPS  # the dataset's (and the Kinects') frame rate
RATE = DATASET_RATE_HZ
NOSE_DISTANCE_M = 0.7


@dataclass(frozen=True)
class SyntheticSequence:
    """One generated sequence: vertices (T, V, 3) float32 metres, audio (S,) float32 at 16 kHz,
    faces (F, 3) int32, and the jaw opening per frame (T,) in [0, 1]."""

    vertices: np.ndarray
    audio: np.ndarray
    faces: np.ndarray
    jaw: np.ndarray


def _subject_shape(subject: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    rng = np.random.default_rng([subject, 4242])
    scale = rng.uniform(0.9, 1.1, 3)
    bulge_centre = rng.normal(0.0, 0.03, 3)
    bulge = rng.uniform(-0.006, 0.006)
    jaw_gain = rng.uniform(0.7, 1.3)
    return scale, bulge_centre, bulge, jaw_gain


def synthetic_sequence(subject: int, seed: int, seconds: float, subdivisions: int = 0,
                       head_motion: bool = True) -> SyntheticSequence:
    """Generate one sequence of `subject` (its shape and style) with performance seed `seed`."""
    from mmface4d_stream.audio.speech import speech_audio
    from mmface4d_stream.geometry import so3_exp
    from mmface4d_stream.render.performance import generate_performance
    from mmface4d_stream.render.subject import sample_subject

    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    model = sample_subject(subdivisions)
    scale, bulge_centre, bulge, jaw_gain = _subject_shape(subject)
    n_frames = max(1, int(round(seconds * FPS)))
    perf = generate_performance(n_frames, seed=seed, fps=FPS)
    perf = replace(perf, jaw=np.clip(perf.jaw * jaw_gain, 0.0, 1.0))
    audio = speech_audio(perf, RATE)
    head_centre = np.array([0.0, 0.0, NOSE_DISTANCE_M + 0.10])
    n_face = model.n_face_vertices
    out = np.empty((n_frames, n_face, 3), dtype=np.float32)
    for f in range(n_frames):
        v = model.vertices(perf.expression(f))[:n_face].astype(np.float64)
        d2 = np.sum((v - bulge_centre) ** 2, axis=1)
        v = v * scale
        v[:, 2] -= bulge * np.exp(-d2 / (2 * 0.03**2))
        if head_motion:
            v = v @ so3_exp(perf.rotation[f]).T + head_centre + perf.translation[f]
        else:
            v = v + head_centre
        out[f] = v
    return SyntheticSequence(out, audio, model.face_faces.astype(np.int32), perf.jaw.astype(np.float32))


def write_synthetic_corpus(out_dir: str | os.PathLike, subjects: int, sequences_per_subject: int,
                           seconds: float, first_seed: int = 0, subdivisions: int = 0, first_subject: int = 0,
                           progress: bool = True) -> list[Path]:
    """Write `subjects x sequences_per_subject` sequences of subjects `first_subject, ...`; seeds count
    up from `first_seed` (the i-th sequence of the s-th subject gets first_seed + s * sequences_per_subject + i).
    Returns the sequence folders."""
    from tqdm import tqdm

    from mmface4d_stream.formats.audio import write_wav
    from mmface4d_stream.formats.mesh_nut import MeshNutWriter

    out = Path(out_dir)
    folders = []
    total = subjects * sequences_per_subject
    with tqdm(total=total, desc="synthetic corpus", unit="seq", disable=not progress, leave=False) as bar:
        for s in range(subjects):
            subject = first_subject + s
            for i in range(sequences_per_subject):
                seed = first_seed + s * sequences_per_subject + i
                name = f"s{subject:02d}_seed{seed:04d}"
                folder = out / f"subject{subject:02d}" / name
                folder.mkdir(parents=True, exist_ok=True)
                seq = synthetic_sequence(subject, seed, seconds, subdivisions)
                write_wav(folder / f"{name}.wav", seq.audio, RATE)
                np.save(folder / "faces.npy", seq.faces)
                with MeshNutWriter(folder / f"{name}_mesh", fps=FPS, atomic=True) as writer:
                    for frame in seq.vertices:
                        writer.write(frame)
                folders.append(folder)
                bar.update(1)
    return folders
