"""The synthetic speech signal follows the performance's syllables and is deterministic."""

from __future__ import annotations

import numpy as np

from mmface4d_stream.audio.speech import speech_audio
from mmface4d_stream.render.performance import generate_performance


def test_speech_audio_is_deterministic_and_follows_the_jaw():
    a = generate_performance(150, seed=3)
    b = generate_performance(150, seed=3)
    audio = speech_audio(a, 16000)
    assert audio.dtype == np.float32 and len(audio) == 5 * 16000
    assert np.array_equal(audio, speech_audio(b, 16000))
    # Loud while the jaw moves, quiet in pauses.
    frames = np.abs(audio[: 150 * 533].reshape(150, 533)).mean(1)
    assert np.corrcoef(frames, a.jaw)[0, 1] > 0.5
