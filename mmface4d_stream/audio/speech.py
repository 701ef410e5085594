"""A speech-like signal for the sample subject's performance (the synthetic captures' microphone)."""

from __future__ import annotations

import math

import numpy as np

from mmface4d_stream.formats.audio import DATASET_RATE_HZ
from mmface4d_stream.render.performance import Performance, bumps

__all__ = ["speech_audio"]


_VOWEL_FORMANTS_HZ = (
    (730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (640, 1190, 2390),
    (490, 1350, 1690), (440, 1020, 2240),
)


def speech_audio(performance: Performance, rate: int = DATASET_RATE_HZ) -> np.ndarray:
    """A speech-like mono signal matching the performance's syllables: float32 (S,) in [-1, 1].

    Voiced phrases: a glottal pulse train (pitch ~90-140 Hz, drifting) through three formant
    resonators whose frequencies glide from vowel to vowel (one vowel per syllable, updated every
    5 ms), under a loudness envelope that peaks with each syllable's jaw opening and stays voiced
    between the syllables of a phrase; faint breath noise everywhere. Voice-activity detectors
    (silero-vad) take it for speech. Its length is the performance's duration; deterministic for
    the performance's seed.
    """
    from scipy.signal import lfilter

    if rate < 8000:
        raise ValueError(f"audio rate must be at least 8000 Hz, got {rate}")
    rng = np.random.default_rng(performance.seed + 7919)
    n = int(round(performance.n_frames / performance.fps * rate))
    t = np.arange(n) / rate
    syl = performance.syllables
    if n == 0:
        return np.zeros(0, dtype=np.float32)

    # Loudness: syllable bumps, bridged inside a phrase (gaps under 0.12 s stay voiced).
    envelope = bumps(t, syl[:, 0], syl[:, 1], syl[:, 2]) ** 0.5 if len(syl) else np.zeros(n)
    for (s0, d0, a0), (s1, _, a1) in zip(syl[:-1], syl[1:]):
        if s1 - (s0 + d0) < 0.12:
            mid = (t > s0 + d0 / 2) & (t < s1 + 0.05)
            envelope[mid] = np.maximum(envelope[mid], 0.45 * min(a0, a1))
    f0 = 115.0 + 22.0 * np.sin(2 * np.pi * 1.3 * t + rng.uniform(0, 6.3)) - 8.0 * np.sin(2 * np.pi * 0.23 * t)
    pulses = (np.diff(np.floor(np.cumsum(f0) / rate), prepend=0.0) > 0).astype(np.float64)
    source = lfilter([1.0], [1.0, -0.95], pulses) + rng.normal(0, 0.02, n)

    # Formant tracks: each syllable's vowel, gliding to the next over the syllable's last 40 %.
    vowels = np.array(_VOWEL_FORMANTS_HZ, dtype=np.float64)[rng.integers(len(_VOWEL_FORMANTS_HZ), size=max(len(syl), 1))]
    block = max(1, rate // 200)
    centres = (np.arange(0, n, block) + block / 2) / rate
    if len(syl):
        idx = np.clip(np.searchsorted(syl[:, 0], centres, side="right") - 1, 0, len(syl) - 1)
        phase = np.clip((centres - syl[idx, 0]) / syl[idx, 1], 0.0, 1.0)
        glide = np.clip((phase - 0.6) / 0.4, 0.0, 1.0)[:, None]
        nxt = np.minimum(idx + 1, len(syl) - 1)
        tracks = (1 - glide) * vowels[idx] + glide * vowels[nxt]
    else:
        tracks = np.tile(vowels[0], (len(centres), 1))
    voiced = np.zeros(n)
    for k in range(3):
        state = np.zeros(2)
        out = np.empty(n)
        for b, start in enumerate(range(0, n, block)):
            f = tracks[b, k]
            r = math.exp(-math.pi * (80.0 + 0.05 * f) / rate)
            theta = 2 * math.pi * f / rate
            seg, state = lfilter([1 - r], [1, -2 * r * math.cos(theta), r * r], source[start : start + block], zi=state)
            out[start : start + block] = seg
        voiced += out
    signal = voiced * envelope
    peak = float(np.max(np.abs(signal)))
    if peak > 0:
        signal *= 0.5 / peak
    signal += 0.001 * rng.standard_normal(n)
    return signal.astype(np.float32)
