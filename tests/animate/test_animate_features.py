"""Audio features and their alignment with mesh frames (frame k <-> audio [k/30, (k+1)/30) s)."""

from __future__ import annotations

import numpy as np
import torch

from mmface4d_stream.animate.data import frame_rms, frames_in_audio
from mmface4d_stream.animate.features import (LogMelConfig, LogMelExtractor, StreamingLogMel, last_feature_index,
                                              mel_filterbank)

RATE = 16000
FPS = 30


def _click(n_samples: int, at_sample: int) -> np.ndarray:
    x = np.zeros(n_samples, np.float32)
    x[at_sample:at_sample + 8] = 0.9
    return x


def test_click_moves_the_frame_that_holds_it():
    # A click 1.21 s in lies in frame 36 ([1.2, 1.2333) s): only that frame's audio level rises.
    audio = _click(2 * RATE, int(1.21 * RATE))
    rms = frame_rms(audio, 60, RATE, FPS)
    assert int(np.argmax(rms)) == 36
    assert rms[36] > 0.1 and np.all(np.delete(rms, 36) == 0)


def test_click_reaches_the_features_of_its_frame_and_not_earlier_ones():
    config = LogMelConfig()
    extractor = LogMelExtractor(config)
    silence = extractor(torch.zeros(2 * RATE))
    for k in (0, 7, 36, 50):
        at = int(np.ceil(k * RATE / FPS)) + 3  # just inside frame k
        feats = extractor(torch.from_numpy(_click(2 * RATE, at)))
        changed = np.flatnonzero((feats - silence).abs().amax(1).numpy() > 1e-3)
        # Without look-ahead, frame k reads the features up to last_feature_index(k): the click
        # never shows in the features frame k-1 reads, and does by the end of frame k's (+ one hop).
        j_k = last_feature_index(k, FPS, 0, config)
        j_prev = last_feature_index(k - 1, FPS, 0, config) if k > 0 else -1
        assert changed.min() > j_prev
        assert changed.min() <= j_k + 1


def test_lookahead_extends_the_features_a_frame_reads():
    config = LogMelConfig()
    # 66 ms at 16 kHz = 1056 samples = 6.6 hops.
    j0 = last_feature_index(np.arange(90), FPS, 0, config)
    j66 = last_feature_index(np.arange(90), FPS, 1056, config)
    assert np.all((j66 - j0 >= 6) & (j66 - j0 <= 7))
    # Feature j ends at (j + 1) * 160 samples <= end of frame k + look-ahead.
    ends = (j66 + 1) * config.hop
    assert np.all(ends <= (np.arange(90) + 1) * RATE / FPS + 1056)
    assert np.all(ends + config.hop > (np.arange(90) + 1) * RATE / FPS + 1056)


def test_streaming_features_equal_offline():
    rng = np.random.default_rng(3)
    x = (0.1 * rng.standard_normal(RATE)).astype(np.float32)
    extractor = LogMelExtractor()
    offline = extractor(torch.from_numpy(x))
    stream = StreamingLogMel(extractor)
    parts, i = [], 0
    for n in (7, 300, 1000, 5, 4000, 10688):
        parts.append(stream.push(x[i:i + n]))
        i += n
    streamed = torch.cat(parts)
    assert streamed.shape == offline.shape == (100, 40)
    assert torch.allclose(streamed, offline, atol=1e-4)


def test_mel_filters_cover_the_band_and_tone_lands_in_its_band():
    config = LogMelConfig()
    filters = mel_filterbank(config).numpy()
    assert filters.shape == (257, 40) and filters.min() >= 0
    t = np.arange(RATE) / RATE
    tone = (0.5 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)
    feats = LogMelExtractor(config)(torch.from_numpy(tone)).numpy()
    band = int(np.argmax(feats[50]))
    centre_bin = int(np.argmax(filters[:, band]))
    assert abs(centre_bin * RATE / config.n_fft - 1000.0) < 150.0


def test_frames_in_audio_rounds_partial_frames():
    assert frames_in_audio(RATE, RATE, FPS) == 30
    assert frames_in_audio(35733, RATE, FPS) == 67  # the sample 000337: 0.3 samples short of 67 frames
    assert frames_in_audio(int(RATE / FPS * 0.4), RATE, FPS) == 0
