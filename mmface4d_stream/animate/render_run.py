"""Offline `run`: a speech wav -> one mesh per 1/fps s of audio, written as a mesh nut triplet.

The neutral face is the model's mean subject unless one is given: a mesh nut triplet (one of its
frames) or a `.npy` (V, 3) array in metres, in any pose: the model's displacements are rotated
into that face's pose (`AnimationModel.pose_onto`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmface4d_stream.animate.animator import AnimationModel
from mmface4d_stream.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["RunResult", "load_neutral", "animate_wav"]


@dataclass(frozen=True)
class RunResult:
    """mesh_prefix: the triplet written; frames: meshes written; seconds: audio duration;
    faces_path: triangles saved beside the triplet (None when the model has none);
    video: the rendered mp4 with the audio (None when not asked)."""

    mesh_prefix: Path
    frames: int
    seconds: float
    faces_path: Path | None
    video: Path | None


def load_neutral(source: str | os.PathLike | None, model: AnimationModel, frame: int = 0) -> np.ndarray:
    """The neutral face (V, 3) float32 metres: `source` a `.npy`, a mesh nut prefix (its `frame`), or
    None for the model's mean subject."""
    if source is None:
        return model.stats.reference.copy()
    text = str(source)
    if text.endswith(".npy"):
        try:
            neutral = np.load(text)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read the neutral face ({exc})", text) from None
    else:
        from mmface4d_stream.formats.mesh_nut import MeshNutReader

        with MeshNutReader(text, n_vertices=model.n_vertices, threads=1) as reader:
            if not 0 <= frame < len(reader):
                raise InputError(f"--neutral-frame {frame} out of range (0..{len(reader) - 1})", text)
            neutral = reader[frame]
    neutral = np.asarray(neutral, dtype=np.float32)
    if neutral.shape != (model.n_vertices, 3) or not np.isfinite(neutral).all():
        raise InputError(f"neutral face must be finite ({model.n_vertices}, 3) metres, got {neutral.shape}", text)
    return neutral


def animate_wav(model: AnimationModel, wav: str | os.PathLike, out_prefix: str | os.PathLike,
                neutral: np.ndarray | None = None, subject: str | None = None,
                video_dir: str | os.PathLike | None = None, faces: str | os.PathLike | None = None,
                progress: bool = True) -> RunResult:
    """Animate `wav` and write `<out_prefix>_{0,1,2}.nut` (+ `<out_prefix>_faces.npy`); with
    `video_dir`, also render `video_dir/output.mp4` (`visualize`) with the audio muxed in."""
    from tqdm import tqdm

    from mmface4d_stream.formats.audio import read_wav
    from mmface4d_stream.formats.mesh_nut import MeshNutWriter

    audio = read_wav(wav)
    if len(audio.samples) == 0:
        raise InputError("audio is empty", wav)
    if subject is not None and subject not in model.subjects:
        raise InputError(f"unknown subject {subject!r}; the model knows {', '.join(model.subjects)}")
    neutral = model.stats.reference if neutral is None else neutral
    rotation = model.pose_onto(neutral)
    coeffs = model.coefficients(audio.samples, audio.rate, subject)
    if len(coeffs) == 0:
        raise InputError(f"audio is shorter than one frame (1/{model.fps:g} s)", wav)
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    with MeshNutWriter(out_prefix, fps=int(round(model.fps)), atomic=True) as writer:
        for k in tqdm(range(len(coeffs)), desc="animate", unit="frame", disable=not progress, leave=False):
            disp = model.displacements(coeffs[k:k + 1])[0]
            writer.write(neutral + disp @ rotation.T)
    faces_path = None
    if model.faces is not None:
        faces_path = Path(f"{out_prefix}_faces.npy")
        np.save(faces_path, model.faces.astype(np.int32))
    video = None
    if video_dir is not None:
        from mmface4d_stream.animate.video import mux_audio
        from mmface4d_stream.render.visualize import render_mesh_video

        tris = faces if faces is not None else model.faces
        if tris is None:
            raise InputError("the model holds no triangles: pass --faces to render the video")
        video = render_mesh_video(out_prefix, video_dir, faces=tris, progress=progress)
        mux_audio(video, audio.samples, audio.rate)
    logger.info("wrote %d meshes to %s_{0,1,2}.nut", len(coeffs), out_prefix)
    return RunResult(out_prefix, len(coeffs), len(audio.samples) / audio.rate, faces_path, video)
