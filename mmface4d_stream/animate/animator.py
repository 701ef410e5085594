"""A trained animation model: the network, the face statistics, and inference on a waveform.

`AnimationModel.load(path)` reads a checkpoint written by `train`; `coefficients(samples)` runs
the network over a whole waveform (offline), `StreamingAnimator` over blocks as they arrive
(live); both give the same frames. `mesh_frames(...)` turns coefficients into meshes on a
neutral face, re-posing the displacements onto it when it is not in the model's aligned frame.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mmface4d_stream.animate.corpus import CorpusStats
from mmface4d_stream.animate.data import frames_in_audio
from mmface4d_stream.animate.encoder import EncoderFeatures, EncoderSpec, open_encoder
from mmface4d_stream.animate.features import (LogMelConfig, LogMelExtractor, StreamingLogMel, last_feature_index,
                                              resample_to)
from mmface4d_stream.animate.model import AnimatorConfig, AudioToMotion, StreamingState
from mmface4d_stream.animate.regions import FaceRegions
from mmface4d_stream.errors import InputError
from mmface4d_stream.geometry import kabsch

__all__ = ["AnimationModel", "StreamingAnimator", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "mmface4d.animate/1"


def _t(a) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


@dataclass
class AnimationModel:
    """Everything `run` and `eval` need. `subjects[i]` owns style code i; `faces` (F, 3) or None;
    `encoder`: the user's audio encoder whose features replace the log-mel ones (`encoder.py`), or
    None for log-mel features. The checkpoint records the encoder's path, rate and dimension."""

    config: AnimatorConfig
    feature_config: LogMelConfig
    fps: float
    net: AudioToMotion
    stats: CorpusStats
    subjects: list[str]
    faces: np.ndarray | None = None
    training: dict = field(default_factory=dict)
    encoder: EncoderFeatures | None = None

    @property
    def n_vertices(self) -> int:
        return self.stats.reference.shape[0]

    @property
    def lookahead_samples(self) -> int:
        return int(round(self.config.lookahead_ms * self.feature_config.rate / 1000.0))

    def extractor(self) -> LogMelExtractor | EncoderFeatures:
        """Waveform (S,) at 16 kHz -> features (S // hop, n_features) on the 100 Hz grid."""
        return self.encoder if self.encoder is not None else LogMelExtractor(self.feature_config)

    def streaming_features(self) -> StreamingLogMel:
        """The same features from audio blocks: `push(block (n,)) -> (m, n_features)`."""
        return self.encoder.streaming() if self.encoder is not None else StreamingLogMel(self.extractor())

    def style(self, subject: str | None) -> torch.Tensor:
        """(S,) style code of a training subject, or the mean code for None / an unknown subject."""
        index = self.subjects.index(subject) if subject in self.subjects else None
        return self.net.style_vector(index).detach()

    def normalize(self, features: torch.Tensor) -> torch.Tensor:
        return (features - _t(self.stats.feature_mean)) / _t(self.stats.feature_std)

    def feature_indices(self, n_frames: int, n_features: int) -> np.ndarray:
        """(n_frames,) int64: which network output each mesh frame reads (clipped at the audio's end)."""
        idx = last_feature_index(np.arange(n_frames), self.fps, self.lookahead_samples, self.feature_config)
        return np.clip(idx, 0, max(n_features - 1, 0))

    def n_frames_for(self, n_samples: int) -> int:
        """Mesh frames in `n_samples` of audio at the feature rate: one per 1/fps s, a last partial
        frame counting when at least half of it is there."""
        return frames_in_audio(n_samples, self.feature_config.rate, self.fps)

    @torch.no_grad()
    def coefficients(self, samples: np.ndarray, rate: int, subject: str | None = None) -> np.ndarray:
        """Offline: mono float32 (S,) audio at `rate` Hz -> displacement coefficients (T, K) metres,
        T = `n_frames_for(len(samples))`."""
        x = resample_to(samples, rate, self.feature_config.rate)
        n_frames = self.n_frames_for(len(x))
        if n_frames == 0:
            return np.zeros((0, len(self.stats.basis)), np.float32)
        self.net.eval()
        feats = self.normalize(self.extractor()(torch.from_numpy(x)))
        z = self.net(feats[None], self.style(subject)[None])[0]
        idx = self.feature_indices(n_frames, len(z))
        return (z[torch.from_numpy(idx)] * _t(self.stats.coeff_std)).numpy()

    def displacements(self, coeffs: np.ndarray) -> np.ndarray:
        """(T, K) coefficients -> (T, V, 3) float32 displacements, metres, in the aligned frame."""
        return (np.asarray(coeffs, np.float32) @ self.stats.basis).reshape(len(coeffs), -1, 3)

    def pose_onto(self, neutral: np.ndarray) -> np.ndarray:
        """Rotation (3, 3) float32 taking aligned-frame displacements onto a neutral face in its own pose."""
        if neutral.shape != self.stats.reference.shape:
            raise InputError(f"neutral face has {neutral.shape[0]} vertices, the model {self.n_vertices}")
        support = self.stats.regions.upper_face
        r, _ = kabsch(self.stats.reference[support], neutral[support])
        return r.astype(np.float32)

    def streaming(self, subject: str | None = None) -> "StreamingAnimator":
        return StreamingAnimator(self, subject)

    # ----------------------------------------------------------------------------- checkpoints

    def state(self) -> dict:
        s = self.stats
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "feature_config": dict(vars(self.feature_config)),
            "fps": float(self.fps),
            "net": self.net.state_dict(),
            "subjects": list(self.subjects),
            "reference": _t(s.reference),
            "neutrals": [_t(s.neutrals[name]) for name in self.subjects],
            "basis": _t(s.basis),
            "coeff_std": _t(s.coeff_std),
            "mean_coeffs": _t(s.mean_coeffs),
            "feature_mean": _t(s.feature_mean),
            "feature_std": _t(s.feature_std),
            "lips": _t(s.regions.lips),
            "upper_face": _t(s.regions.upper_face),
            "faces": None if self.faces is None else _t(self.faces.astype(np.int32)),
            "training": self.training,
            "audio_encoder": None if self.encoder is None else self.encoder.spec.to_dict(),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the checkpoint atomically (a partial file never replaces a good one)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.partial")
        torch.save(self.state(), tmp)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu",
             audio_encoder: str | os.PathLike | None = None) -> "AnimationModel":
        """Read a checkpoint. `audio_encoder` replaces the encoder file the model was trained with
        (the same encoder moved elsewhere): it must give the recorded feature dimension."""
        path = Path(path)
        if not path.is_file():
            raise InputError("model file not found", path)
        try:
            state = torch.load(path, map_location=device, weights_only=True)
        except Exception as exc:  # any unpickling failure means "not our checkpoint"
            raise InputError(f"not a readable model checkpoint ({type(exc).__name__}: {exc})", path) from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise InputError(f"not an animation model (expected format {CHECKPOINT_FORMAT})", path)
        config = AnimatorConfig.from_dict(state["config"])
        net = AudioToMotion(config)
        net.load_state_dict(state["net"])
        net.eval()
        subjects = list(state["subjects"])
        stats = CorpusStats(
            reference=state["reference"].numpy(),
            neutrals={name: n.numpy() for name, n in zip(subjects, state["neutrals"])},
            basis=state["basis"].numpy(), coeff_std=state["coeff_std"].numpy(),
            mean_coeffs=state["mean_coeffs"].numpy(), feature_mean=state["feature_mean"].numpy(),
            feature_std=state["feature_std"].numpy(),
            regions=FaceRegions(state["lips"].numpy(), state["upper_face"].numpy()))
        faces = None if state["faces"] is None else state["faces"].numpy()
        feature_config = LogMelConfig(**state["feature_config"])
        encoder = None
        if state.get("audio_encoder") is not None:
            spec = EncoderSpec.from_dict(state["audio_encoder"])
            encoder = open_encoder(spec.path if audio_encoder is None else audio_encoder, window_s=spec.window_s,
                                   expect_dim=spec.dim, trained_rate_hz=spec.rate_hz, config=feature_config)
        elif audio_encoder is not None:
            raise InputError("the model was trained on log-mel features, not an audio encoder: "
                             "drop --audio-encoder", path)
        return cls(config, feature_config, state["fps"], net, stats, subjects, faces,
                   state.get("training") or {}, encoder)


class StreamingAnimator:
    """Audio blocks in, mesh-frame coefficients out, as soon as each frame's audio (plus the
    look-ahead) has arrived.

    `push(block)` takes float32 (n,) samples at the model's feature rate (16 kHz) and returns a list
    of (frame index, coefficients (K,) metres) completed by them; `finish()` returns the frames whose
    look-ahead runs past the end of the audio (they read the last output, as offline).
    """

    def __init__(self, model: AnimationModel, subject: str | None = None):
        self.model = model
        self._mel = model.streaming_features()
        self._style = model.style(subject)
        self._state = StreamingState()
        self._outputs: list[torch.Tensor] = []  # outputs not yet consumed, starting at _first_output
        self._first_output = 0
        self._samples = 0
        self.next_frame = 0
        model.net.eval()

    @torch.no_grad()
    def push(self, block: np.ndarray) -> list[tuple[int, np.ndarray]]:
        block = np.asarray(block, dtype=np.float32).reshape(-1)
        self._samples += len(block)
        feats = self._mel.push(block)
        if len(feats):
            z = self.model.net.step(self.model.normalize(feats), self._style, self._state)
            self._outputs.extend(z)
        ready = []
        n_out = self._first_output + len(self._outputs)
        while True:
            j = max(last_feature_index(self.next_frame, self.model.fps, self.model.lookahead_samples,
                                       self.model.feature_config), 0)
            if j >= n_out:
                break
            ready.append((self.next_frame, self._coeffs(j)))
            self.next_frame += 1
        self._drop_consumed()
        return ready

    def finish(self) -> list[tuple[int, np.ndarray]]:
        """Frames left when the audio ends (`AnimationModel.n_frames_for` of all audio received)."""
        n_frames = self.model.n_frames_for(self._samples)
        n_out = self._first_output + len(self._outputs)
        out = []
        while self.next_frame < n_frames and n_out > 0:
            out.append((self.next_frame, self._coeffs(n_out - 1)))
            self.next_frame += 1
        return out

    def _coeffs(self, j: int) -> np.ndarray:
        return (self._outputs[j - self._first_output] * _t(self.model.stats.coeff_std)).numpy()

    def _drop_consumed(self) -> None:
        j = max(last_feature_index(self.next_frame, self.model.fps, self.model.lookahead_samples,
                                   self.model.feature_config), 0)
        # Keep the output the next frame reads (and the last one, which `finish` may reuse).
        drop = min(j, self._first_output + len(self._outputs) - 1) - self._first_output
        if drop > 0:
            del self._outputs[:drop]
            self._first_output += drop
