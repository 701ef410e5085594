"""The sample subject's performance: deterministic for a seed, speech-like, smooth."""

from __future__ import annotations

import numpy as np

from mmface4d_stream.render.performance import generate_performance


def test_performance_is_deterministic_and_speech_like():
    a = generate_performance(150, seed=3)
    b = generate_performance(150, seed=3)
    c = generate_performance(150, seed=4)
    for name in ("jaw", "pucker", "smile", "blink", "brow", "rotation", "translation"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.jaw, c.jaw)
    assert a.jaw.max() > 0.3 and (a.jaw < 0.05).any()
    assert np.abs(np.degrees(a.rotation)).max() < 12 and np.abs(a.translation).max() < 0.02
    # Frame-to-frame motion is smooth (no jumps above ~1 degree or 2 mm at 30 fps).
    assert np.abs(np.diff(np.degrees(a.rotation), axis=0)).max() < 1.0
    assert np.abs(np.diff(a.translation, axis=0)).max() < 0.002
