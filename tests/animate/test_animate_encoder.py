"""`--audio-encoder`: a user's TorchScript speech encoder replacing the log-mel features.

The encoder here is tiny and made in the test (a strided conv over the waveform, 320 samples per
frame = 50 frames/s, D = 6), saved with `torch.jit.save`; nothing is downloaded.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmface4d_stream.animate.animator import AnimationModel
from mmface4d_stream.animate.encoder import EncoderFeatures, open_encoder
from mmface4d_stream.animate.features import LogMelConfig, last_feature_index
from mmface4d_stream.cli import main
from mmface4d_stream.errors import InputError
from mmface4d_stream.formats.audio import read_wav, write_wav
from mmface4d_stream.formats.mesh_nut import MeshNutReader

from animate_helpers import copy_sequences, play_to_subscriber

RATE = 16000
FPS = 30
DIM = 6
STRIDE = 320  # samples per encoder frame: 50 Hz
WINDOW_S = 0.2  # 3200 samples = 10 encoder frames: the last output covers the window's last 320 samples


class _ConvEncoder(torch.nn.Module):
    """(1, S) waveform -> (1, S // 320, dim): log power of a strided conv, 50 frames/s."""

    def __init__(self, dim: int = DIM, rate_attr: bool = True):
        super().__init__()
        torch.manual_seed(7)
        self.conv = torch.nn.Conv1d(1, dim, STRIDE, stride=STRIDE)
        self.frame_rate_hz = 50.0 if rate_attr else 0.0

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        y = self.conv(waveform[:, None, :])
        return torch.log(y.square() + 1e-6).transpose(1, 2)


class _FlatEncoder(torch.nn.Module):
    """A wrong interface: (1, S) -> (S // 320, 6), no batch axis."""

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return waveform[0, : waveform.shape[1] // 320 * 320].reshape(-1, 320)[:, :6]


def _save(module: torch.nn.Module, path) -> str:
    torch.jit.save(torch.jit.script(module), str(path))
    return str(path)


def _click(n_samples: int, at_sample: int) -> np.ndarray:
    x = np.zeros(n_samples, np.float32)
    x[at_sample:at_sample + 8] = 0.9
    return x


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory) -> str:
    return _save(_ConvEncoder(), tmp_path_factory.mktemp("encoder") / "conv_encoder.pt")


@pytest.fixture(scope="module")
def encoder_model(synthetic_corpus, encoder_file, tmp_path_factory):
    """(model path, data folder): a one-epoch model on 2 subjects x 2 sequences through the encoder."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("encoder_model")
    data = root / "data"
    copy_sequences(sorted(synthetic_corpus[0].glob("subject0[01]/*seed000[05]*"))
                   + sorted(synthetic_corpus[0].glob("subject0[01]/*seed000[16]*")), data)
    out = root / "model.pt"
    assert main(["animate", "train", "--data", str(data), "--out", str(out), "--epochs", "1", "--hidden", "16",
                 "--components", "6", "--val-fraction", "0", "--audio-encoder", encoder_file,
                 "--audio-encoder-window", str(WINDOW_S)]) == 0
    return out, data


def test_click_reaches_the_encoder_frame_that_ends_after_it(encoder_file):
    features = open_encoder(encoder_file, window_s=WINDOW_S)
    assert features.spec.rate_hz == 50.0 and features.spec.dim == DIM
    silence = features(np.zeros(RATE, np.float32))
    assert silence.shape == (100, DIM)  # the log-mel's 100 Hz grid: S // 160 rows
    for at in (5, 3333, 8000, 12345):
        feats = features(_click(RATE, at))
        changed = np.flatnonzero((feats - silence).abs().amax(1).numpy() > 1e-3)
        # Encoder frame j = at // 320 ends at 320 (j + 1): held on grid rows 2j+1 and 2j+2 (10 ms each).
        j = at // STRIDE
        assert changed.tolist() == [2 * j + 1, 2 * j + 2]


def test_streaming_encoder_features_equal_offline(encoder_file):
    features = open_encoder(encoder_file, window_s=WINDOW_S)
    rng = np.random.default_rng(3)
    x = (0.1 * rng.standard_normal(RATE)).astype(np.float32)
    offline = features(x)
    stream = features.streaming()
    parts, i = [], 0
    for n in (7, 300, 1000, 5, 4000, 10688):
        parts.append(stream.push(x[i:i + n]))
        i += n
    streamed = torch.cat(parts)
    assert streamed.shape == offline.shape == (100, DIM)
    assert torch.equal(streamed, offline)


def test_rate_comes_from_the_attribute_or_the_option(tmp_path):
    no_attr = _save(_ConvEncoder(rate_attr=False), tmp_path / "no_attr.pt")
    # A module whose frame_rate_hz is 0.0 counts as having the attribute and is refused.
    with pytest.raises(InputError, match="frame rate must be in"):
        open_encoder(no_attr)

    class Plain(torch.nn.Module):
        def forward(self, waveform: torch.Tensor) -> torch.Tensor:
            return waveform[:, : waveform.shape[1] // 640 * 640].reshape(1, -1, 640)[:, :, :4]

    plain = _save(Plain(), tmp_path / "plain.pt")
    assert open_encoder(plain).spec.rate_hz == 50.0  # the default
    assert open_encoder(plain, rate_hz=25.0).spec.rate_hz == 25.0
    with pytest.raises(InputError, match="contradicts the module's frame_rate_hz 50"):
        open_encoder(_save(_ConvEncoder(), tmp_path / "conv.pt"), rate_hz=25.0)


def test_training_records_the_encoder_and_run_uses_it(encoder_model, encoder_file, synthetic_corpus, tmp_path):
    model_path, _ = encoder_model
    state = torch.load(model_path, weights_only=True)
    assert state["audio_encoder"]["path"] == encoder_file and state["audio_encoder"]["dim"] == DIM
    assert state["audio_encoder"]["rate_hz"] == 50.0 and state["audio_encoder"]["window_s"] == WINDOW_S
    assert state["config"]["n_features"] == DIM and state["feature_mean"].shape == (DIM,)
    model = AnimationModel.load(model_path)
    assert isinstance(model.extractor(), EncoderFeatures)
    assert model.extractor()(np.zeros(RATE, np.float32)).shape == (100, DIM)
    assert model.net.inp.in_features == DIM

    speech = read_wav(sorted(synthetic_corpus[1].rglob("*.wav"))[0]).samples
    wav = tmp_path / "speech.wav"
    write_wav(wav, speech[: int(1.5 * RATE)], RATE)
    assert main(["animate", "run", "--audio", str(wav), "--model", str(model_path), "--out",
                 str(tmp_path / "face")]) == 0
    with MeshNutReader(tmp_path / "face") as reader:
        assert len(reader) == 45
        frames = np.stack(list(reader))
    expected = model.stats.reference + model.displacements(model.coefficients(speech[: int(1.5 * RATE)], RATE))
    assert np.abs(frames - expected).max() < 2e-4  # the file's quantization


def test_a_click_reaches_the_right_mesh_frame_through_the_encoder(encoder_model):
    model = AnimationModel.load(encoder_model[0])
    L = model.lookahead_samples
    silence = model.coefficients(np.zeros(2 * RATE, np.float32), RATE)
    config = LogMelConfig()
    for k in (10, 36):
        at = int(np.ceil(k * RATE / FPS)) + 3  # just inside mesh frame k
        coeffs = model.coefficients(_click(2 * RATE, at), RATE)
        changed = np.flatnonzero(np.abs(coeffs - silence).max(1) > 1e-7)
        # The click's encoder frame ends at 320 (j + 1) and is first held on grid row 2j + 1: the
        # first mesh frame that reads that row (look-ahead included) is the first to move.
        first_row = 2 * (at // STRIDE) + 1
        rows = last_feature_index(np.arange(60), FPS, L, config)
        assert changed.min() == int(np.argmax(rows >= first_row))
        # ... which is no earlier than the frame holding the click minus the look-ahead.
        assert changed.min() >= k - int(np.ceil(model.config.lookahead_ms / 1000 * FPS))


def test_live_streaming_through_the_encoder_equals_offline(encoder_model, synthetic_corpus):
    model = AnimationModel.load(encoder_model[0])
    speech = read_wav(sorted(synthetic_corpus[1].rglob("*.wav"))[0]).samples[: RATE]
    offline = model.coefficients(speech, RATE)
    streamer = model.streaming()
    frames = []
    for begin in range(0, len(speech), 160):  # the microphone's 10 ms blocks
        frames += streamer.push(speech[begin:begin + 160])
    frames += streamer.finish()
    assert [k for k, _ in frames] == list(range(30))
    np.testing.assert_allclose(np.stack([c for _, c in frames]), offline, atol=1e-5)


def test_eval_uses_the_encoder(encoder_model, capsys):
    model_path, data = encoder_model
    assert main(["animate", "eval", "--data", str(data), "--model", str(model_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["frames"] == 4 * 120 and report["model"]["lve_mm"] > 0


def _one_error_line(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_missing_or_wrong_encoder_is_one_line_and_exit_2(encoder_model, encoder_file, tmp_path, capsys):
    model_path, data = encoder_model
    moved = tmp_path / "model.pt"
    state = torch.load(model_path, weights_only=True)
    state["audio_encoder"]["path"] = str(tmp_path / "gone.pt")
    torch.save(state, moved)
    wav = sorted(data.rglob("*.wav"))[0]
    run = ["animate", "run", "--audio", str(wav), "--out", str(tmp_path / "face")]
    line = _one_error_line(run + ["--model", str(moved)], capsys)
    assert "gone.pt: audio encoder file not found" in line
    line = _one_error_line(["animate", "eval", "--data", str(data), "--model", str(moved)], capsys)
    assert "audio encoder file not found" in line
    # The same encoder moved elsewhere: --audio-encoder points at it.
    assert main(run + ["--model", str(moved), "--audio-encoder", encoder_file]) == 0
    capsys.readouterr()
    # A different dimension, a wrong output shape, not TorchScript at all.
    wrong_dim = _save(_ConvEncoder(dim=5), tmp_path / "d5.pt")
    line = _one_error_line(run + ["--model", str(model_path), "--audio-encoder", wrong_dim], capsys)
    assert "gives 5 features per frame, the model was trained with 6" in line
    flat = _save(_FlatEncoder(), tmp_path / "flat.pt")
    line = _one_error_line(run + ["--model", str(model_path), "--audio-encoder", flat], capsys)
    assert "expected (1, T, D)" in line
    (tmp_path / "junk.pt").write_bytes(b"not a module")
    line = _one_error_line(["animate", "train", "--data", str(data), "--out", str(tmp_path / "m.pt"),
                            "--audio-encoder", str(tmp_path / "junk.pt")], capsys)
    assert "not a TorchScript audio encoder" in line
    line = _one_error_line(["animate", "train", "--data", str(data), "--out", str(tmp_path / "m.pt"),
                            "--audio-encoder", str(tmp_path / "nope.pt")], capsys)
    assert "nope.pt: audio encoder file not found" in line
    # A log-mel model refuses an encoder.
    assert main(["animate", "train", "--data", str(data), "--out", str(tmp_path / "mel.pt"), "--epochs", "1",
                 "--hidden", "8", "--components", "4", "--val-fraction", "0"]) == 0
    capsys.readouterr()
    line = _one_error_line(run + ["--model", str(tmp_path / "mel.pt"), "--audio-encoder", encoder_file], capsys)
    assert "trained on log-mel features" in line


def test_live_microphone_path_publishes_encoder_meshes(encoder_model, synthetic_corpus, tmp_path):
    """A wav played through the microphone's callback path, with the encoder: meshes reach a subscriber."""
    model = AnimationModel.load(encoder_model[0])
    speech = read_wav(sorted(synthetic_corpus[1].rglob("*.wav"))[0]).samples[:RATE]
    result, received, _, _ = play_to_subscriber(model, speech, tmp_path)
    assert result.meshes == 30 and [m.frame for m in received] == list(range(30))
    assert result.latency_ms_p50 <= 150.0
    offline = model.stats.reference + model.displacements(model.coefficients(speech, RATE))
    np.testing.assert_allclose(np.stack([m.vertices for m in received]), offline, atol=1e-5)
