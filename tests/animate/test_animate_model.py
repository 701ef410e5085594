"""The trained model: causal with bounded look-ahead, streaming == offline, beats the baselines."""

from __future__ import annotations

import numpy as np
import pytest

from mmface4d_stream.animate.animator import AnimationModel
from mmface4d_stream.animate.evaluate import evaluate
from mmface4d_stream.animate.model import AnimatorConfig
from mmface4d_stream.formats.audio import read_wav

RATE = 16000
FPS = 30


@pytest.fixture(scope="module")
def model(trained_model) -> AnimationModel:
    return AnimationModel.load(trained_model)


@pytest.fixture(scope="module")
def heldout_wav(synthetic_corpus):
    return sorted(synthetic_corpus[1].rglob("*.wav"))[0]


def test_model_is_causal_with_bounded_lookahead(model, heldout_wav):
    audio = read_wav(heldout_wav).samples
    base = model.coefficients(audio, RATE)
    lookahead = model.lookahead_samples
    assert 0 < model.config.lookahead_ms <= 100
    for t in (10, 45, 80):
        # Replace everything after the end of frame t plus the look-ahead with loud noise.
        cut = int(np.ceil((t + 1) * RATE / FPS)) + lookahead
        changed = audio.copy()
        changed[cut:] = np.random.default_rng(t).uniform(-0.8, 0.8, len(audio) - cut)
        out = model.coefficients(changed, RATE)
        np.testing.assert_allclose(out[: t + 1], base[: t + 1], atol=1e-6)
        assert np.abs(out[t + 4:] - base[t + 4:]).max() > 1e-4  # later frames do hear it


def test_lookahead_over_100_ms_is_refused():
    with pytest.raises(ValueError, match="look-ahead"):
        AnimatorConfig(n_features=40, n_components=8, n_subjects=1, lookahead_ms=120.0)


def test_streaming_equals_offline(model, heldout_wav):
    audio = read_wav(heldout_wav).samples
    offline = model.coefficients(audio, RATE)
    streamer = model.streaming()
    frames = []
    rng = np.random.default_rng(0)
    i = 0
    while i < len(audio):
        n = int(rng.integers(1, 700))
        frames += streamer.push(audio[i:i + n])
        i += n
    frames += streamer.finish()
    assert [k for k, _ in frames] == list(range(len(offline)))
    np.testing.assert_allclose(np.stack([c for _, c in frames]), offline, atol=1e-5)


def test_training_beats_the_static_face_on_heldout_seeds(model, synthetic_corpus):
    report = evaluate(model, [synthetic_corpus[1]], progress=False)
    assert report.sequences == 8 and report.frames == 8 * 120
    improvement = 1.0 - report.model.lve_mm / report.static_face.lve_mm
    assert improvement >= 0.30, report.table()
    assert report.model.lve_mm < report.mean_motion.lve_mm
    # The static face has no upper-face motion at all, so its FDD is the truth's own dynamics.
    assert report.static_face.fdd_mm > 0
    assert report.inference_ms_per_frame > 0


def test_checkpoint_round_trip_and_split(model, synthetic_corpus):
    split = model.training["split"]
    train_subjects = {p.split("/")[-3] for p in split["train"]}
    val_subjects = {p.split("/")[-3] for p in split["val"]}
    assert train_subjects and val_subjects and not train_subjects & val_subjects
    assert sorted(model.subjects) == sorted(train_subjects)
    assert model.training["epoch"] == 12 and len(model.training["history"]) == 12
    assert model.training["history"][-1]["val_rmse_mm"] < model.training["history"][0]["val_rmse_mm"]
    assert model.faces is not None and model.faces.shape[1] == 3
    assert model.stats.basis.shape == (len(model.stats.coeff_std), 3 * model.n_vertices)
    np.testing.assert_allclose(model.stats.basis @ model.stats.basis.T, np.eye(len(model.stats.basis)), atol=1e-4)
