"""MKV + wav -> MMFace4D dataset files (mmface4d_stream/k4a/preprocess.py, `mmface4d preprocess`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.signal import lfilter

from mmface4d_stream.k4a.mkv_reader import MkvReader
from mmface4d_stream.k4a.mkv_writer import MkvWriter

for _module in ("audio", "color_mp4", "depth_nut", "intrinsics"):
    pytest.importorskip(f"mmface4d_stream.formats.{_module}")

from mmface4d_stream.formats.audio import read_wav, write_wav  # noqa: E402
from mmface4d_stream.formats.color_mp4 import ColorMp4Reader  # noqa: E402
from mmface4d_stream.formats.depth_nut import DepthNutReader  # noqa: E402
from mmface4d_stream.formats.intrinsics import IntrinsicsJson  # noqa: E402
from mmface4d_stream.k4a.preprocess import preprocess  # noqa: E402

SR = 16_000
PERIOD = 33_333


@pytest.fixture(scope="module")
def calibration_raw(k4a_sample_dir) -> bytes:
    with MkvReader(k4a_sample_dir / "recording.mkv") as reader:
        return reader.calibration_raw


def _color(k: int) -> np.ndarray:
    """720p frame whose brightness encodes the frame number k (k * 3, clipped)."""
    return np.full((720, 1280, 3), min(250, 10 + 3 * k), np.uint8)


def _record(path, calibration_raw, n, *, mode="STANDALONE", serial="SN0", sub_delay=0, drop=()):
    depth = np.full((576, 640), 1000, np.uint16)  # a wall 1 m away
    with MkvWriter(path, calibration_raw=calibration_raw, color_mode="MJPG_720P", ir=False, serial_number=serial,
                   wired_sync_mode=mode, subordinate_delay_usec=sub_delay) as w:
        for k in range(n):
            if k in drop:
                continue
            w.write(5_000_000 + k * PERIOD + sub_delay, color=_color(k), depth=depth)
    return path


def _speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Formant-synthesized vowels at 4 syllables/s (glottal pulses through 3 resonators)."""
    rng = np.random.default_rng(seed)
    vowels = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (640, 1190, 2390)]
    out = []
    n = SR // 4
    t = np.arange(n) / SR
    for s in range(int(seconds * 4)):
        f0 = 110 + 20 * np.sin(2 * np.pi * 1.5 * (s / 4 + t))
        pulses = (np.diff(np.floor(np.cumsum(f0) / SR), prepend=0) > 0).astype(float)
        source = lfilter([1], [1, -0.95], pulses) + rng.normal(0, 0.02, n)
        y = np.zeros(n)
        for f in vowels[s % 5]:
            r, th = np.exp(-np.pi * (80 + 0.05 * f) / SR), 2 * np.pi * f / SR
            y += lfilter([1 - r], [1, -2 * r * np.cos(th), r * r], source)
        out.append(y * np.sin(np.pi * t / t[-1]) ** 0.5)
    y = np.concatenate(out)
    return (0.3 * y / np.abs(y).max()).astype(np.float32)


def _silence(seconds: float, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1e-3, int(seconds * SR)).astype(np.float32)


def _check_outputs(out, name, n_cams, n_frames, first_k):
    for i in range(n_cams):
        with ColorMp4Reader(out / f"{name}_{i}.mp4") as reader:
            frames = list(reader)
        assert len(frames) == n_frames
        assert frames[0].shape == (720, 1280, 3)
        assert abs(float(frames[0].mean()) - float(_color(first_k).mean())) < 3
        with DepthNutReader(out / f"{name}_{i}.nut") as reader:
            depths = list(reader)
        assert len(depths) == n_frames
        d = depths[-1]
        assert d.shape == (720, 1280) and d.dtype == np.uint16
        valid = d[d > 0]
        # The 1 m wall seen from the color camera: Z within a few cm of 1000 mm, covering the middle.
        assert valid.size > 0.3 * d.size and abs(float(np.median(valid)) - 1000) < 30
        meta = json.loads((out / f"{name}_{i}.json").read_text())
        assert meta["width"] == 1280 and meta["height"] == 720
        assert meta["color_mode"] == "MJPG_720P" and meta["depth_mode"] == "NFOV_UNBINNED"
        loaded = IntrinsicsJson.load(out / f"{name}_{i}.json")
        assert 500 < loaded.fx < 700 and 600 < loaded.cx < 680
    assert not list(out.glob(".*partial*"))


def test_no_vad_keeps_everything_two_cameras(tmp_path, calibration_raw):
    a = _record(tmp_path / "a.mkv", calibration_raw, 12, mode="MASTER", serial="SN0")
    b = _record(tmp_path / "b.mkv", calibration_raw, 12, mode="SUBORDINATE", serial="SN1", sub_delay=160, drop=(5,))
    wav = tmp_path / "s.wav"
    audio = _silence(0.5)
    write_wav(wav, audio, SR)
    out = tmp_path / "out"
    result = preprocess([a, b], wav, out, "seq", vad=False, progress=False)
    assert result.frames == 12 and result.repeated == [0, 1]
    _check_outputs(out, "seq", 2, 12, first_k=0)
    samples, rate = read_wav(out / "seq.wav")
    assert rate == SR and samples.dtype == np.float32
    np.testing.assert_allclose(samples, audio, atol=1e-7)
    # Camera 1 dropped frame 5: its frame 5 repeats frame 4.
    with ColorMp4Reader(out / "seq_1.mp4") as reader:
        frames = list(reader)
    assert abs(float(frames[5].mean()) - float(_color(4).mean())) < 3


def test_injected_speech_span_clips_frames_and_audio(tmp_path, calibration_raw):
    mkv = _record(tmp_path / "a.mkv", calibration_raw, 40)
    wav = tmp_path / "s.wav"
    audio = np.linspace(-0.5, 0.5, int(40 / 30 * SR), dtype=np.float32)
    write_wav(wav, audio, SR)
    out = tmp_path / "out"
    # Speech from 0.34 s (frame 10) to 0.70 s (frame 21): keep frames [10, 23).
    result = preprocess([mkv], wav, out, "clip", speech_span=lambda s, r: (0.34, 0.70), progress=False)
    assert (result.span.start, result.span.stop) == (10, 23)
    assert result.frames == 13
    _check_outputs(out, "clip", 1, 13, first_k=10)
    samples, _ = read_wav(out / "clip.wav")
    begin, end = round(10 * SR / 30), round(23 * SR / 30)
    np.testing.assert_allclose(samples, audio[begin:end], atol=1e-7)
    assert abs(len(samples) / SR - 13 / 30) < 1e-3


def test_silero_vad_on_synthetic_speech(tmp_path, calibration_raw):
    mkv = _record(tmp_path / "a.mkv", calibration_raw, 75)
    wav = tmp_path / "s.wav"
    write_wav(wav, np.concatenate([_silence(1.0), _speech_like(1.0), _silence(0.5)]), SR)
    out = tmp_path / "out"
    result = preprocess([mkv], wav, out, "vad", progress=False)
    # Speech occupies 1.0-2.0 s: onset frame ~30, last speech frame ~60 (silero pads ~30 ms-0.2 s).
    assert 27 <= result.span.start <= 31
    assert 59 <= result.span.stop - 2 <= 68
    assert result.frames == result.span.stop - result.span.start
    _check_outputs(out, "vad", 1, result.frames, first_k=result.span.start)
    samples, _ = read_wav(out / "vad.wav")
    assert abs(len(samples) / SR - result.frames / 30) < 1e-3


def test_cli_preprocess_and_errors(tmp_path, calibration_raw, capsys, monkeypatch):
    from mmface4d_stream import cli

    # Only this area's commands: the test should not depend on other areas' CLI modules.
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("mmface4d_stream.k4a.cli",))
    main = cli.main

    mkv = _record(tmp_path / "a.mkv", calibration_raw, 6)
    wav = tmp_path / "s.wav"
    write_wav(wav, _silence(0.2), SR)
    out = tmp_path / "out"
    assert main(["preprocess", "--mkv", str(mkv), "--audio", str(wav), "--out", str(out), "--name", "c",
                 "--no-vad"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["c.wav", "c_0.json", "c_0.mp4", "c_0.nut"]

    bad = tmp_path / "bad.mkv"
    bad.write_bytes(b"\x00" * 100)
    assert main(["preprocess", "--mkv", str(bad), "--audio", str(wav), "--out", str(tmp_path / "o2"),
                 "--name", "c"]) == 2
    assert "bad.mkv" in capsys.readouterr().err
    # Silence only: VAD finds no speech -> a one-line error, nothing written.
    assert main(["preprocess", "--mkv", str(mkv), "--audio", str(wav), "--out", str(tmp_path / "o3"),
                 "--name", "c"]) == 2
    assert "no speech" in capsys.readouterr().err
    assert not (tmp_path / "o3").exists()


def test_speech_past_the_recording_end_clips_audio_to_frames(tmp_path, calibration_raw):
    mkv = _record(tmp_path / "a.mkv", calibration_raw, 20)
    wav = tmp_path / "s.wav"
    write_wav(wav, _silence(3.0), SR)
    out = tmp_path / "out"
    result = preprocess([mkv], wav, out, "late", speech_span=lambda s, r: (0.5, 2.5), progress=False)
    assert (result.span.start, result.span.stop) == (15, 77)
    assert result.frames == 5  # frames 15..19: the recordings end first
    samples, _ = read_wav(out / "late.wav")
    assert len(samples) == round(20 * SR / 30) - round(15 * SR / 30)
    _check_outputs(out, "late", 1, 5, first_k=15)


def test_failure_midway_leaves_no_final_files(tmp_path, calibration_raw, monkeypatch):
    from mmface4d_stream.k4a import preprocess as module

    mkv = _record(tmp_path / "a.mkv", calibration_raw, 10)
    wav = tmp_path / "s.wav"
    write_wav(wav, _silence(0.4), SR)
    original = module._CameraOutput.write
    calls = []

    def failing_write(self, capture):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("disk full")
        original(self, capture)

    monkeypatch.setattr(module._CameraOutput, "write", failing_write)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="disk full"):
        preprocess([mkv], wav, out, "f", vad=False, progress=False)
    assert not [p.name for p in out.iterdir() if not p.name.startswith(".")]


def test_a_5_fps_recording_is_preprocessed_at_its_own_rate(tmp_path, calibration_raw, caplog):
    """Kinects record at 5, 15 or 30 fps (the shared sample is 5 fps): files keep the recording's rate."""
    mkv = tmp_path / "slow.mkv"
    depth = np.full((576, 640), 1000, np.uint16)
    with MkvWriter(mkv, calibration_raw=calibration_raw, color_mode="MJPG_720P", ir=False, fps=5) as w:
        for k in range(6):
            w.write(5_000_000 + k * 200_000, color=_color(k), depth=depth)
    wav = tmp_path / "s.wav"
    write_wav(wav, _silence(3.0), SR)
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        result = preprocess([mkv], wav, out, "slow", speech_span=lambda s, r: (0.2, 0.5), progress=False)
    assert "5 fps" in caplog.text and "released dataset is 30 fps" in caplog.text
    # Speech 0.2-0.5 s at 5 fps: onset frame 1, last speech frame 2, two tail frames -> [1, 4).
    assert (result.span.start, result.span.stop, result.frames) == (1, 4, 3)
    _check_outputs(out, "slow", 1, 3, first_k=1)
    with DepthNutReader(out / "slow_0.nut") as reader:
        assert reader.fps == 5
    with ColorMp4Reader(out / "slow_0.mp4") as reader:
        assert reader.fps == 5
    samples, _ = read_wav(out / "slow.wav")
    assert len(samples) == round(4 * SR / 5) - round(1 * SR / 5)
