"""Causal and zero-phase Butterworth smoothing against direct scipy calls."""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import pytest
from scipy import signal

from mmface4d_stream.smooth import (
    CausalButterworth,
    chunk_columns,
    smooth_4d,
    smooth_mesh_nut,
)


def _sequence(n_frames: int = 90, n_vertices: int = 40, seed: int = 0) -> np.ndarray:
    """A face-like track: a slow drift plus jitter, float32 (T, N, 3) metres."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames)[:, None, None] / 30.0
    base = rng.normal(0.0, 0.05, size=(1, n_vertices, 3)) + np.array([0.0, 0.0, 0.6])
    motion = 0.01 * np.sin(2 * np.pi * 0.7 * t)
    jitter = rng.normal(0.0, 0.002, size=(n_frames, n_vertices, 3))
    return (base + motion + jitter).astype(np.float32)


def test_causal_zero_init_over_chunks_equals_sosfilt_on_the_whole_sequence():
    x = _sequence()
    sos = signal.butter(5, 5.0, fs=30.0, output="sos")
    expected = signal.sosfilt(sos, x.astype(np.float64), axis=0)
    smoother = CausalButterworth(5.0, 5, 30.0, init="zero")
    pieces, start = [], 0
    for size in [1, 7, 1, 20, 3, 0, 30, 28]:
        pieces.append(smoother.filter(x[start:start + size]))
        start += size
    assert start == len(x)
    got = np.concatenate(pieces)
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_causal_steady_init_per_frame_equals_sosfilt_with_scaled_zi():
    x = _sequence().astype(np.float64)
    smoother = CausalButterworth()
    got = np.stack([smoother.process(frame) for frame in x])
    zi = signal.sosfilt_zi(smoother.sos)[:, :, None, None] * x[0][None, None]
    expected, _ = signal.sosfilt(smoother.sos, x, axis=0, zi=zi)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    # A still input passes unchanged from the first frame: no start transient.
    still = np.repeat(x[:1], 10, axis=0)
    smoother.reset()
    np.testing.assert_allclose(smoother.filter(still), still, atol=1e-12)


def test_causal_reset_and_shape_checks():
    smoother = CausalButterworth(init="zero")
    first = smoother.filter(np.ones((5, 4, 3)))
    with pytest.raises(ValueError, match="reset"):
        smoother.process(np.ones((5, 3)))
    smoother.reset()
    np.testing.assert_array_equal(smoother.filter(np.ones((5, 4, 3))), first)
    with pytest.raises(ValueError, match="Nyquist"):
        CausalButterworth(cutoff_hz=15.0, fps=30.0)
    with pytest.raises(ValueError, match="init"):
        CausalButterworth(init="mirror")


def test_group_delay_matches_the_measured_lag_of_a_slow_ramp():
    smoother = CausalButterworth()
    delay = smoother.group_delay_frames()
    assert delay == pytest.approx(2.80, abs=0.01)
    assert smoother.group_delay_frames(5.0) == pytest.approx(5.74, abs=0.01)
    ramp = np.arange(200, dtype=np.float64)  # one unit per frame
    out = smoother.filter(ramp)
    assert ramp[-1] - out[-1] == pytest.approx(delay, abs=1e-3)


def _upstream_reference(x: np.ndarray, pad: int = 3) -> np.ndarray:
    """The upstream recipe written out column by column with plain scipy calls."""
    b, a = signal.butter(5, 5, fs=30, btype="low", analog=False)
    flat = x.reshape(len(x), -1)
    padded = np.concatenate([np.repeat(flat[:1], pad, 0), flat, np.repeat(flat[-1:], pad, 0)])
    out = np.zeros_like(padded)
    for column in range(padded.shape[1]):
        out[:, column] = signal.filtfilt(b, a, padded[:, column])
    return out[pad:-pad].reshape(x.shape)


def test_smooth_4d_equals_direct_filtfilt_with_replicate_padding():
    x = _sequence(67, 30, seed=3)
    got = smooth_4d(x)
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_allclose(got, _upstream_reference(x), rtol=0, atol=1e-6)
    x64 = np.random.default_rng(4).normal(size=(40, 5, 3))
    np.testing.assert_allclose(smooth_4d(x64), _upstream_reference(x64), rtol=0, atol=1e-12)
    # Zero phase: a symmetric bump stays centred.
    bump = np.exp(-0.5 * ((np.arange(61) - 30) / 4.0) ** 2)
    assert int(np.argmax(smooth_4d(bump))) == 30


def test_smooth_4d_handles_sequences_shorter_than_the_filtfilt_extension():
    x = _sequence(8, 5)
    got = smooth_4d(x)
    assert got.shape == x.shape and np.isfinite(got).all()
    np.testing.assert_allclose(smooth_4d(np.repeat(x[:1], 4, 0)), np.repeat(x[:1], 4, 0), atol=1e-6)
    with pytest.raises(ValueError, match="T >= 1"):
        smooth_4d(np.zeros((0, 3)))


def test_smooth_4d_on_the_real_sample_matches_the_upstream_recipe(mmface4d_sample_dir):
    mesh_nut = pytest.importorskip("mmface4d_stream.formats.mesh_nut")
    with mesh_nut.MeshNutReader(mmface4d_sample_dir / "reconstruct_filt", n_vertices=35709) as reader:
        frames = np.stack(list(itertools.islice(reader, 30)))
    got = smooth_4d(frames)
    reference = _upstream_reference(frames[:, :500])
    np.testing.assert_allclose(got[:, :500], reference, rtol=0, atol=1e-6)
    # The released files are already filtered: filtering again moves vertices by well under 1 mm.
    assert np.abs(got - frames).max() < 1e-3


def _write_triplet(prefix, frames) -> None:
    from mmface4d_stream.formats.mesh_nut import MeshNutWriter

    with MeshNutWriter(prefix, fps=30) as writer:
        for frame in frames:
            writer.write(frame)


def test_streamed_file_smoothing_equals_in_memory(tmp_path):
    mesh_nut = pytest.importorskip("mmface4d_stream.formats.mesh_nut")
    x = _sequence(45, 700, seed=5)
    _write_triplet(tmp_path / "in", x)
    with mesh_nut.MeshNutReader(tmp_path / "in", n_vertices=700) as reader:
        decoded = np.stack(list(reader))
    # A small chunk budget forces several vertex chunks.
    budget = 45_000
    assert chunk_columns(45, 2100, budget) < 2100
    calls = []
    result = smooth_mesh_nut(tmp_path / "in", tmp_path / "out", n_vertices=700, chunk_bytes=budget,
                             progress=lambda n, total: calls.append((n, total)))
    assert result.n_frames == 45 and result.n_vertices == 700 and result.n_chunks > 1
    assert sum(n for n, _ in calls) == calls[-1][1] == 2 * 45 + result.n_chunks
    _write_triplet(tmp_path / "expected", smooth_4d(decoded))
    with mesh_nut.MeshNutReader(tmp_path / "out", n_vertices=700) as out, \
            mesh_nut.MeshNutReader(tmp_path / "expected", n_vertices=700) as expected:
        assert len(out) == 45
        np.testing.assert_array_equal(np.stack(list(out)), np.stack(list(expected)))
    assert not list(tmp_path.glob(".smooth-*")), "temporary file left behind"


def test_smooth_cli(tmp_path, capsys):
    pytest.importorskip("mmface4d_stream.formats.mesh_nut")
    from mmface4d_stream import cli
    from mmface4d_stream.errors import InputError

    _write_triplet(tmp_path / "seq", _sequence(20, 50))
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["smooth", "--file_path", str(tmp_path / "seq_0.nut"),
                              "--out_path", str(tmp_path / "seq_filt"), "--vertices", "50"])
    assert args.func(args) == 0
    assert "smoothed 20 frames x 50 vertices" in capsys.readouterr().out
    assert all((tmp_path / f"seq_filt_{axis}.nut").is_file() for axis in range(3))
    args = parser.parse_args(["smooth", "--file_path", str(tmp_path / "missing"), "--out_path", str(tmp_path / "x")])
    with pytest.raises(InputError, match="missing"):
        args.func(args)
    args = parser.parse_args(["smooth", "--file_path", str(tmp_path / "seq"), "--out_path", str(tmp_path / "x"),
                              "--cutoff-hz", "20"])
    with pytest.raises(InputError, match="Nyquist"):
        args.func(args)


def test_smooth_mesh_nut_on_the_real_sample(mmface4d_sample_dir, tmp_path):
    mesh_nut = pytest.importorskip("mmface4d_stream.formats.mesh_nut")
    prefix = mmface4d_sample_dir / "reconstruct_filt"
    result = smooth_mesh_nut(prefix, tmp_path / "filt", n_vertices=35709)
    assert (result.n_frames, result.n_vertices) == (67, 35709)
    with mesh_nut.MeshNutReader(prefix, n_vertices=35709) as reader:
        expected = smooth_4d(np.stack(list(reader)))
    with mesh_nut.MeshNutReader(tmp_path / "filt", n_vertices=35709) as reader:
        got = np.stack(list(reader))
    # Equal up to the 16-bit quantization of the written files (range ~0.3 m / 2**17).
    np.testing.assert_allclose(got, expected, rtol=0, atol=4e-6)
