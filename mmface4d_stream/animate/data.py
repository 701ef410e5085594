"""MMFace4D-layout training sequences: `<seq>.wav` beside a reconstructed mesh nut triplet.

`discover_sequences(roots)` walks one or more folders for `*.wav` files and pairs each with the
mesh triplet in the same folder (any topology; the depth videos `<seq>_<cam>.nut`, which are not
square, are skipped). Preferred mesh prefixes, in order: `reconstruct_filt` (the upstream name),
`<seq>_mesh`, `reconstruct`, then any other square triplet. Sequences without a mesh are skipped
with a warning.

Subjects: a sequence's subject is looked up in `<root>/subjects.json` (`{"<seq>": "<subject>"}`)
when that file exists; otherwise it is the first folder below the root on the way to the wav
(`root/<subject>/.../<seq>.wav`), or the root's own name for a wav directly in the root.

Alignment: mesh frame k (30 fps) goes with the audio `[k / fps, (k + 1) / fps)` s; a sequence
has `min(mesh frames, frames_in_audio(...))` usable frames: one per 1/fps s of audio, a last
partial frame counting when at least half of it is there (dataset wavs end a fraction of a
sample short of the video).
"""

from __future__ import annotations

import json
import math
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmface4d_stream.errors import InputError
from mmface4d_stream.formats.audio import DATASET_RATE_HZ

logger = logging.getLogger(__name__)

__all__ = ["SequenceFiles", "discover_sequences", "frames_in_audio", "split_by_subject", "read_sequence_audio",
           "frame_rms"]

MESH_PREFIX_PREFERENCE = ("reconstruct_filt", "{seq}_mesh", "reconstruct")


@dataclass(frozen=True)
class SequenceFiles:
    """One training sequence: its audio, mesh triplet, subject and usable frame count."""

    name: str
    subject: str
    wav_path: Path
    mesh_prefix: Path
    n_frames: int
    n_vertices: int
    fps: float

    @property
    def faces_path(self) -> Path | None:
        """Triangles beside the triplet (`<prefix>_faces.npy` or `faces.npy`), if any."""
        for p in (Path(f"{self.mesh_prefix}_faces.npy"), self.mesh_prefix.parent / "faces.npy"):
            if p.is_file():
                return p
        return None


def _mesh_prefixes(folder: Path, seq: str) -> list[Path]:
    prefixes = sorted({p.name[:-len("_0.nut")] for p in folder.glob("*_0.nut")})
    complete = [folder / p for p in prefixes if all((folder / f"{p}_{a}.nut").is_file() for a in (1, 2))]
    order = [name.format(seq=seq) for name in MESH_PREFIX_PREFERENCE]
    return sorted(complete, key=lambda p: (order.index(p.name) if p.name in order else len(order), p.name))


def _open_mesh(prefix: Path):
    from mmface4d_stream.formats.mesh_nut import MeshNutReader

    try:
        return MeshNutReader(prefix, threads=1)
    except InputError:
        return None  # not square: a camera's depth video triplet, not a mesh sequence


def _subject_of(wav: Path, root: Path, table: dict[str, str]) -> str:
    if wav.stem in table:
        return str(table[wav.stem])
    rel = wav.parent.relative_to(root)
    return rel.parts[0] if rel.parts else root.resolve().name


def _read_subject_table(root: Path) -> dict[str, str]:
    path = root / "subjects.json"
    if not path.is_file():
        return {}
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read subjects.json ({exc})", path) from None
    if not isinstance(table, dict):
        raise InputError('subjects.json must be a JSON object {"<seq>": "<subject>"}', path)
    return table


def discover_sequences(roots: list[str | os.PathLike], fps: float = 30.0) -> list[SequenceFiles]:
    """All usable sequences under the folders `roots`, sorted by (subject, name)."""
    from mmface4d_stream.formats.audio import read_wav

    found: list[SequenceFiles] = []
    for root in map(Path, roots):
        if not root.is_dir():
            raise InputError("data folder not found", root)
        table = _read_subject_table(root)
        for wav in sorted(root.rglob("*.wav")):
            reader = None
            for prefix in _mesh_prefixes(wav.parent, wav.stem):
                reader = _open_mesh(prefix)
                if reader is not None:
                    break
            if reader is None:
                logger.warning("%s: no mesh nut triplet beside it, skipped", wav)
                continue
            with reader:
                n_mesh, n_vertices = len(reader), reader.n_vertices
                mesh_fps = float(reader.fps or fps)
            if abs(mesh_fps - fps) > 0.01:
                raise InputError(f"mesh sequence runs at {mesh_fps:g} fps, expected {fps:g}", prefix)
            audio = read_wav(wav)
            n_audio = frames_in_audio(len(audio.samples), audio.rate, fps)
            if abs(n_audio - n_mesh) > 1:
                logger.warning("%s: %d mesh frames but %.3f s of audio; using %d frames", wav, n_mesh,
                               len(audio.samples) / audio.rate, min(n_mesh, n_audio))
            n = min(n_mesh, n_audio)
            if n < 1:
                logger.warning("%s: no frame with audio, skipped", wav)
                continue
            found.append(SequenceFiles(wav.stem, _subject_of(wav, root, table), wav, prefix, n, n_vertices, fps))
    if not found:
        raise InputError(f"no sequence (<seq>.wav beside a mesh nut triplet) under {', '.join(map(str, roots))}")
    sizes = {s.n_vertices for s in found}
    if len(sizes) > 1:
        raise InputError(f"sequences have different vertex counts {sorted(sizes)}: one topology per model")
    return sorted(found, key=lambda s: (s.subject, s.name, str(s.wav_path)))


def frames_in_audio(n_samples: int, rate: int, fps: float) -> int:
    """Mesh frames in `n_samples` of audio at `rate` Hz: round(seconds * fps), half up."""
    return int(math.floor(n_samples * fps / rate + 0.5))


def split_by_subject(sequences: list[SequenceFiles], val_fraction: float, seed: int = 0
                     ) -> tuple[list[SequenceFiles], list[SequenceFiles]]:
    """Subject-disjoint (train, validation) split: about `val_fraction` of the subjects validate.

    With one subject everything trains (and the validation list is empty).
    """
    if not 0 <= val_fraction < 1:
        raise InputError(f"validation fraction must be in [0, 1), got {val_fraction}")
    subjects = sorted({s.subject for s in sequences})
    n_val = int(round(val_fraction * len(subjects)))
    n_val = min(n_val, len(subjects) - 1)
    if val_fraction > 0 and len(subjects) > 1:
        n_val = max(n_val, 1)
    rng = random.Random(seed)
    val_subjects = set(rng.sample(subjects, n_val))
    train = [s for s in sequences if s.subject not in val_subjects]
    val = [s for s in sequences if s.subject in val_subjects]
    return train, val


def read_sequence_audio(seq: SequenceFiles, rate: int = DATASET_RATE_HZ) -> np.ndarray:
    """The sequence's audio resampled to `rate`: float32 (S,), trimmed to its usable frames."""
    from mmface4d_stream.animate.features import resample_to
    from mmface4d_stream.formats.audio import read_wav

    audio = read_wav(seq.wav_path)
    samples = resample_to(audio.samples, audio.rate, rate)
    end = int(np.ceil(seq.n_frames * rate / seq.fps))
    return samples[:end]


def frame_rms(samples: np.ndarray, n_frames: int, rate: int, fps: float) -> np.ndarray:
    """Root-mean-square level of each frame's audio `[k / fps, (k + 1) / fps)`: float32 (n_frames,)."""
    edges = np.floor(np.arange(n_frames + 1) * rate / fps).astype(np.int64)
    edges = np.minimum(edges, len(samples))
    power = np.concatenate([[0.0], np.cumsum(np.square(samples.astype(np.float64)))])
    counts = np.maximum(edges[1:] - edges[:-1], 1)
    return np.sqrt((power[edges[1:]] - power[edges[:-1]]) / counts).astype(np.float32)
