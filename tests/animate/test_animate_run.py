"""`mmface4d animate run/eval/train/synth` through the CLI, on synthetic data and the real sample 000337."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmface4d_stream.cli import main
from mmface4d_stream.formats.audio import read_wav, write_wav
from mmface4d_stream.formats.mesh_nut import MeshNutReader

from animate_helpers import copy_sequences

RATE = 16000


@pytest.mark.parametrize("seconds, expected", [(1.5, 45), (1.0 + 0.6 / 30, 31), (0.5 + 0.4 / 30, 15)])
def test_run_writes_one_mesh_per_frame_of_audio(trained_model, synthetic_corpus, tmp_path, seconds, expected):
    speech = read_wav(sorted(synthetic_corpus[1].rglob("*.wav"))[0]).samples
    wav = tmp_path / "speech.wav"
    write_wav(wav, speech[: int(round(seconds * RATE))], RATE)
    rc = main(["animate", "run", "--audio", str(wav), "--model", str(trained_model), "--out", str(tmp_path / "face")])
    assert rc == 0
    with MeshNutReader(tmp_path / "face") as reader:
        assert len(reader) == expected
        frames = np.stack(list(reader))
    assert frames.shape[1:] == (470, 3)
    assert np.load(tmp_path / "face_faces.npy").shape[1] == 3
    # The mouth moves with the speech: lip vertices travel millimetres over the clip.
    assert np.ptp(frames[:, 14], axis=0).max() > 1e-3


def test_run_on_a_given_neutral_face_in_another_pose(trained_model, synthetic_corpus, tmp_path):
    from mmface4d_stream.animate.animator import AnimationModel
    from mmface4d_stream.geometry import so3_exp

    model = AnimationModel.load(trained_model)
    R = so3_exp([0.1, 0.5, -0.2]).astype(np.float32)
    posed = model.stats.reference @ R.T + np.array([0.1, -0.05, 0.3], np.float32)
    np.save(tmp_path / "neutral.npy", posed)
    wav = sorted(synthetic_corpus[1].rglob("*.wav"))[0]
    assert main(["animate", "run", "--audio", str(wav), "--model", str(trained_model),
                 "--out", str(tmp_path / "a")]) == 0
    assert main(["animate", "run", "--audio", str(wav), "--model", str(trained_model), "--out", str(tmp_path / "b"),
                 "--neutral", str(tmp_path / "neutral.npy")]) == 0
    with MeshNutReader(tmp_path / "a") as ra, MeshNutReader(tmp_path / "b") as rb:
        a, b = ra[30], rb[30]
    # The same animation, carried rigidly onto the posed face (up to the files' quantization).
    expected = a @ R.T + np.array([0.1, -0.05, 0.3], np.float32)
    assert np.abs(b - expected).max() < 2e-4


def test_run_renders_video_with_audio(trained_model, synthetic_corpus, tmp_path):
    import av

    speech = read_wav(sorted(synthetic_corpus[1].rglob("*.wav"))[0]).samples
    wav = tmp_path / "speech.wav"
    write_wav(wav, speech[:RATE], RATE)
    rc = main(["animate", "run", "--audio", str(wav), "--model", str(trained_model), "--out", str(tmp_path / "face"),
               "--video", str(tmp_path / "video")])
    assert rc == 0
    with av.open(str(tmp_path / "video" / "output.mp4")) as container:
        kinds = sorted(s.type for s in container.streams)
        video_frames = sum(1 for _ in container.decode(video=0))
    assert kinds == ["audio", "video"]
    assert video_frames == 30


def test_eval_json_reports_model_and_baselines(trained_model, synthetic_corpus, capsys):
    rc = main(["animate", "eval", "--data", str(synthetic_corpus[1]), "--model", str(trained_model), "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    for name in ("model", "static_face", "mean_motion"):
        assert report[name]["lve_mm"] > 0 and report[name]["fdd"] >= 0
    assert report["model"]["lve_mm"] < report["static_face"]["lve_mm"]


@pytest.mark.parametrize("argv, message", [
    (["animate", "train", "--data", "/nonexistent/folder", "--out", "m.pt"], "data folder not found"),
    (["animate", "eval", "--data", ".", "--model", "/nonexistent/model.pt"], "model file not found"),
    (["animate", "train", "--data", ".", "--out", "m.pt", "--lookahead-ms", "150"], "--lookahead-ms must be 0..100"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_resume_continues_training(synthetic_corpus, tmp_path):
    import torch

    data = tmp_path / "small"
    copy_sequences(sorted(synthetic_corpus[0].glob("subject0[01]/*seed000[0-1]*"))
                   + sorted(synthetic_corpus[0].glob("subject0[01]/*seed000[5-6]*")), data)
    args = ["animate", "train", "--data", str(data), "--out", str(tmp_path / "m.pt"), "--hidden", "16",
            "--components", "6", "--val-fraction", "0"]
    assert main(args + ["--epochs", "1"]) == 0
    first = torch.load(tmp_path / "m.pt", weights_only=True)
    assert first["training"]["epoch"] == 1
    assert main(args + ["--epochs", "3", "--resume"]) == 0
    resumed = torch.load(tmp_path / "m.pt", weights_only=True)
    assert resumed["training"]["epoch"] == 3
    assert [h["epoch"] for h in resumed["training"]["history"]] == [1, 2, 3]
    # Resuming keeps the face statistics of the first run (no second pass over the data).
    assert torch.equal(first["basis"], resumed["basis"])
    assert not torch.equal(first["net"]["out.weight"], resumed["net"]["out.weight"])


def test_real_sample_end_to_end(mmface4d_sample_dir, tmp_path, capsys):
    """Train on the real 67-frame sequence (BFM topology, real speech), evaluate, run on its wav."""
    mapping = str(mmface4d_sample_dir / "landmark_mapping2.json")
    model = tmp_path / "real.pt"
    assert main(["animate", "train", "--data", str(mmface4d_sample_dir), "--out", str(model), "--epochs", "2",
                 "--hidden", "16", "--components", "4", "--landmark-mapping", mapping]) == 0
    assert main(["animate", "eval", "--data", str(mmface4d_sample_dir), "--model", str(model), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["frames"] == 67 and report["static_face"]["lve_mm"] > 0
    out = tmp_path / "anim"
    assert main(["animate", "run", "--audio", str(mmface4d_sample_dir / "000337.wav"), "--model", str(model),
                 "--neutral", str(mmface4d_sample_dir / "reconstruct_filt"), "--out", str(out)]) == 0
    with MeshNutReader(out) as reader, MeshNutReader(mmface4d_sample_dir / "reconstruct_filt") as real:
        assert len(reader) == len(real) == 67
        first, neutral = reader[0], real[0]
    assert first.shape == (35709, 3)
    # Displacements from the given neutral face are small (a face, not a jump elsewhere).
    assert np.linalg.norm(first - neutral, axis=1).max() < 0.02
