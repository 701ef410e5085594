"""The sample subject's facial performance: speech-like jaw and lip motion, smiles, blinks, brows, head motion.

`generate_performance` samples a deterministic `Performance` at a frame rate; each frame's
`Expression` drives `SubjectModel.vertices` (`render.subject`), its rotation and translation move
the head, and its syllables drive the speech signal (`audio.speech.speech_audio`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mmface4d_stream.render.subject import Expression

__all__ = ["Performance", "bumps", "generate_performance"]


@dataclass(frozen=True)
class Performance:
    """A deterministic facial performance sampled at `fps`.

    Arrays have one row per frame: jaw, pucker, smile, blink, brow (F,) in [0, 1] (see
    `Expression`); rotation (F, 3) rotation vectors (radians) and translation (F, 3) metres of the
    head relative to its mean pose; syllables: (S, 3) start s, duration s, loudness of each
    syllable (drives the audio).
    """

    fps: float
    seed: int
    jaw: np.ndarray
    pucker: np.ndarray
    smile: np.ndarray
    blink: np.ndarray
    brow: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    syllables: np.ndarray

    @property
    def n_frames(self) -> int:
        return len(self.jaw)

    def expression(self, frame: int) -> Expression:
        return Expression(
            float(self.jaw[frame]), float(self.pucker[frame]), float(self.smile[frame]),
            float(self.blink[frame]), float(self.brow[frame]),
        )


def bumps(t: np.ndarray, starts: np.ndarray, durations: np.ndarray, heights: np.ndarray) -> np.ndarray:
    """Sum of raised-cosine bumps (start, duration, height) sampled at times t (s)."""
    out = np.zeros_like(t)
    for s, d, a in zip(starts, durations, heights):
        x = (t - s) / d
        inside = (x > 0) & (x < 1)
        out[inside] += a * 0.5 * (1 - np.cos(2 * np.pi * x[inside]))
    return out


def _smooth_noise(rng: np.random.Generator, t: np.ndarray, amplitude: float, freqs=(0.11, 0.23, 0.41)) -> np.ndarray:
    out = np.zeros_like(t)
    for f in freqs:
        f = f * rng.uniform(0.8, 1.25)
        out += np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) / len(freqs) ** 0.5
    return amplitude * out


def generate_performance(n_frames: int, seed: int = 0, fps: float = 30.0) -> Performance:
    """Speech-like jaw and lip motion, smiles, blinks, brow raises and small head motion.

    Speech: syllables 0.12-0.3 s long with pauses between phrases (4-5 syllables per second while
    talking). Blinks every 2-5 s (0.2 s). Head: yaw within ~±9°, pitch ±5°, roll ±3°,
    translation within ~±1.5 cm, all smooth. Deterministic for (n_frames, seed, fps).
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be at least 1, got {n_frames}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames) / fps
    duration = n_frames / fps

    syllables = []
    now = rng.uniform(0.0, 0.15)
    while now < duration:
        phrase = int(rng.integers(3, 9))
        for _ in range(phrase):
            d = rng.uniform(0.12, 0.3)
            syllables.append((now, d, rng.uniform(0.35, 1.0)))
            now += d * rng.uniform(0.85, 1.05)
        now += rng.uniform(0.25, 0.7)
    syl = np.array(syllables, dtype=np.float64).reshape(-1, 3)
    jaw = np.clip(bumps(t, syl[:, 0], syl[:, 1], syl[:, 2] * 0.75), 0, 1)
    rounded = rng.random(len(syl)) < 0.35
    pucker = np.clip(bumps(t, syl[rounded, 0], syl[rounded, 1] * 1.1, rng.uniform(0.4, 0.9, rounded.sum())), 0, 1)

    n_smiles = max(1, int(duration / 4))
    smile = bumps(t, rng.uniform(-0.5, duration, n_smiles), rng.uniform(1.5, 3.0, n_smiles), rng.uniform(0.5, 1.0, n_smiles))
    smile = np.clip(smile + 0.1, 0, 1)

    blink_starts = []
    now = rng.uniform(0.2, 1.5)
    while now < duration:
        blink_starts.append(now)
        now += rng.uniform(2.0, 5.0)
    blink = np.clip(bumps(t, np.array(blink_starts), np.full(len(blink_starts), 0.2), np.full(len(blink_starts), 1.0)), 0, 1)

    n_brows = max(1, int(duration / 5))
    brow = np.clip(bumps(t, rng.uniform(0, duration, n_brows), rng.uniform(0.6, 1.2, n_brows), rng.uniform(0.5, 1.0, n_brows)), 0, 1)

    rotation = np.stack([
        _smooth_noise(rng, t, math.radians(3.5)),  # pitch (about x)
        _smooth_noise(rng, t, math.radians(6.0)),  # yaw (about y)
        _smooth_noise(rng, t, math.radians(2.0)),  # roll (about z)
    ], 1)
    translation = np.stack([_smooth_noise(rng, t, 0.006), _smooth_noise(rng, t, 0.005), _smooth_noise(rng, t, 0.008)], 1)
    return Performance(fps=float(fps), seed=int(seed), jaw=jaw, pucker=pucker, smile=smile, blink=blink, brow=brow,
                       rotation=rotation, translation=translation, syllables=syl)
