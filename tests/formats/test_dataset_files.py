"""Depth nut, color mp4, intrinsics json, landmark pkl, wav, faces, and DatasetSequence."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmface4d_stream.errors import InputError
from mmface4d_stream.formats.audio import read_wav, write_wav
from mmface4d_stream.formats.color_mp4 import ColorMp4Reader, ColorMp4Writer
from mmface4d_stream.formats.depth_nut import DepthNutReader, DepthNutWriter
from mmface4d_stream.formats.faces import load_faces, write_obj, write_ply
from mmface4d_stream.formats.intrinsics import IntrinsicsJson
from mmface4d_stream.formats.landmarks import read_landmarks_pkl, write_landmarks_pkl
from mmface4d_stream.formats.sequence import DatasetSequence


def _depth_frames(n: int, width: int = 96, height: int = 64) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    frames = []
    for i in range(n):
        depth = rng.integers(400, 1500, (height, width)).astype(np.uint16)
        depth[: i + 1, : i + 1] = 0
        frames.append(depth)
    return frames


def test_depth_nut_roundtrip_is_lossless(tmp_path):
    frames = _depth_frames(7)
    with DepthNutWriter(tmp_path / "d.nut", 96, 64) as writer:
        for depth in frames:
            writer.write(depth)
    with DepthNutReader(tmp_path / "d.nut") as reader:
        assert (len(reader), reader.width, reader.height, reader.fps) == (7, 96, 64, 30.0)
        for original, back in zip(frames, reader):
            np.testing.assert_array_equal(original, back)
        np.testing.assert_array_equal(reader[4], frames[4])


def test_depth_nut_at_dataset_resolution(tmp_path):
    depth = np.full((1080, 1920), 700, np.uint16)
    depth[500:600, 900:1000] = 0
    with DepthNutWriter(tmp_path / "d.nut", 1920, 1080) as writer:
        writer.write(depth)
        writer.write(depth + 1)
    with DepthNutReader(tmp_path / "d.nut") as reader:
        frames = list(reader)
    assert len(frames) == 2 and frames[1][0, 0] == 701 and frames[0][550, 950] == 0


def test_depth_writer_rejects_wrong_frames(tmp_path):
    with DepthNutWriter(tmp_path / "d.nut", 8, 8) as writer:
        with pytest.raises(ValueError, match="uint16 frame of shape"):
            writer.write(np.zeros((8, 8), np.float32))
        with pytest.raises(ValueError, match="uint16 frame of shape"):
            writer.write(np.zeros((9, 8), np.uint16))


def test_atomic_writer_renames_only_on_success(tmp_path):
    target = tmp_path / "d.nut"
    with pytest.raises(RuntimeError):
        with DepthNutWriter(target, 8, 8, atomic=True) as writer:
            writer.write(np.ones((8, 8), np.uint16))
            raise RuntimeError("stage failed")
    assert not target.exists()
    with DepthNutWriter(target, 8, 8, atomic=True) as writer:
        writer.write(np.ones((8, 8), np.uint16))
    assert target.exists() and len(DepthNutReader(target)) == 1


def test_not_a_video(tmp_path):
    (tmp_path / "x.nut").write_bytes(b"hello, this is not a NUT file" * 10)
    with pytest.raises(InputError, match=r"x\.nut: not a readable video file"):
        DepthNutReader(tmp_path / "x.nut")
    (tmp_path / "e.nut").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        DepthNutReader(tmp_path / "e.nut")
    with pytest.raises(InputError, match="file not found"):
        DepthNutReader(tmp_path / "missing.nut")


def test_color_mp4_roundtrip(tmp_path):
    from skimage.data import astronaut
    from skimage.transform import resize

    smooth = (resize(astronaut(), (72, 128), anti_aliasing=True) * 255).astype(np.uint8)
    with ColorMp4Writer(tmp_path / "c.mp4", 128, 72) as writer:
        for shift in range(5):
            writer.write(np.roll(smooth, shift, axis=1))
    with ColorMp4Reader(tmp_path / "c.mp4") as reader:
        assert (len(reader), reader.width, reader.height, reader.fps) == (5, 128, 72, 30.0)
        frames = list(reader)
    assert len(frames) == 5 and frames[0].shape == (72, 128, 3) and frames[0].dtype == np.uint8
    # crf 10 with 4:2:0 chroma: lossy, but within a few grey levels on a natural image.
    assert np.abs(frames[2].astype(int) - np.roll(smooth, 2, axis=1)).mean() < 6


def test_color_writer_needs_even_size(tmp_path):
    with pytest.raises(ValueError, match="even"):
        ColorMp4Writer(tmp_path / "c.mp4", 127, 72)


def test_intrinsics_json_matches_the_sample(mmface4d_sample_dir, tmp_path):
    intr = IntrinsicsJson.load(mmface4d_sample_dir / "000337_0.json")
    assert (intr.width, intr.height, intr.color_mode, intr.depth_mode) == (1920, 1080, "MJPG_1080P", "NFOV_UNBINNED")
    assert intr.fx == pytest.approx(910.9786376953125) and intr.cy == pytest.approx(543.6405029296875)
    assert intr.serial_number == "000250714112" and intr.stream_length_usec == 4033334
    intr.save(tmp_path / "i.json")
    assert IntrinsicsJson.load(tmp_path / "i.json") == intr
    original = json.loads((mmface4d_sample_dir / "000337_0.json").read_text())
    assert json.loads((tmp_path / "i.json").read_text()) == original


def test_intrinsics_errors(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        IntrinsicsJson.load(tmp_path / "bad.json")
    (tmp_path / "partial.json").write_text('{"width": 4}')
    with pytest.raises(InputError, match="missing key"):
        IntrinsicsJson.load(tmp_path / "partial.json")


def test_landmarks_pkl(mmface4d_sample_dir, tmp_path):
    landmarks = read_landmarks_pkl(mmface4d_sample_dir / "000337_1.pkl")
    assert landmarks.shape == (67, 98, 2) and landmarks.dtype == np.float64
    assert 0 < landmarks[..., 0].min() and landmarks[..., 0].max() < 1920
    write_landmarks_pkl(tmp_path / "l.pkl", landmarks)
    np.testing.assert_array_equal(read_landmarks_pkl(tmp_path / "l.pkl"), landmarks)
    (tmp_path / "junk.pkl").write_bytes(b"\x00\x01junk")
    with pytest.raises(InputError, match="junk.pkl"):
        read_landmarks_pkl(tmp_path / "junk.pkl")


def test_wav(mmface4d_sample_dir, tmp_path):
    audio = read_wav(mmface4d_sample_dir / "000337.wav")
    assert audio.rate == 16000 and audio.samples.dtype == np.float32
    assert audio.samples.shape == (35733,)
    write_wav(tmp_path / "a.wav", audio.samples)
    again = read_wav(tmp_path / "a.wav")
    np.testing.assert_array_equal(again.samples, audio.samples)
    with pytest.raises(ValueError, match="NaN"):
        write_wav(tmp_path / "b.wav", np.array([0.0, np.nan], np.float32))


def test_faces_from_every_format(mmface4d_sample_dir, tmp_path):
    faces_npy = load_faces(mmface4d_sample_dir / "bfm_faces.npy", 35709)
    faces_pkl = load_faces(mmface4d_sample_dir / "bfm_faces.pkl", 35709)  # a trimesh TrackedArray pickle
    assert faces_npy.shape == (70789, 3)
    np.testing.assert_array_equal(faces_npy, faces_pkl)
    mediapipe = load_faces(mmface4d_sample_dir / "faces.pkl", 468)
    assert mediapipe.shape == (854, 3)
    vertices = np.random.default_rng(0).random((468, 3)).astype(np.float32)
    write_obj(tmp_path / "m.obj", vertices, mediapipe)
    np.testing.assert_array_equal(load_faces(tmp_path / "m.obj", 468), mediapipe)
    write_ply(tmp_path / "m.ply", vertices, mediapipe)
    header = (tmp_path / "m.ply").read_bytes().split(b"end_header\n")[0]
    assert b"element vertex 468" in header and b"element face 854" in header
    one_based = tmp_path / "one.npy"
    np.save(one_based, np.array([[1, 2, 3], [2, 3, 4]]))
    np.testing.assert_array_equal(load_faces(one_based, 4), [[0, 1, 2], [1, 2, 3]])
    with pytest.raises(InputError, match="outside"):
        load_faces(mmface4d_sample_dir / "bfm_faces.npy", 1000)


def _write_sequence(folder, name, cameras=2, frames=(4, 4), size=(64, 48)):
    width, height = size
    for cam, n in zip(range(cameras), frames):
        with ColorMp4Writer(folder / f"{name}_{cam}.mp4", width, height) as writer:
            for _ in range(n):
                writer.write(np.full((height, width, 3), 90, np.uint8))
        with DepthNutWriter(folder / f"{name}_{cam}.nut", width, height) as writer:
            for _ in range(n):
                writer.write(np.full((height, width), 700, np.uint16))
        IntrinsicsJson(fx=50.0, fy=50.0, cx=32.0, cy=24.0, width=width, height=height,
                       serial_number=f"00{cam}").save(folder / f"{name}_{cam}.json")
    write_wav(folder / f"{name}.wav", np.zeros(int(16000 * max(frames) / 30), np.float32))


def test_dataset_sequence_consistent(tmp_path):
    _write_sequence(tmp_path, "seq")
    sequence = DatasetSequence(tmp_path / "seq")
    assert sequence.camera_indices == [0, 1] and sequence.n_frames == 4 and sequence.fps == 30.0
    assert sequence.report().ok, sequence.report().problems
    summary = sequence.summary()
    assert summary["cameras"][1]["frames"] == {"color": 4, "depth": 4}
    assert summary["audio"]["rate"] == 16000 and summary["consistent"]
    assert DatasetSequence(tmp_path).name == "seq"


def test_dataset_sequence_reports_problems(tmp_path):
    _write_sequence(tmp_path, "seq", frames=(4, 3))
    (tmp_path / "seq_1.json").unlink()
    problems = DatasetSequence(tmp_path / "seq").report().problems
    assert any("missing seq_1.json" in p for p in problems)
    assert any("different frame counts" in p and "seq_1 color: 3" in p for p in problems)


def test_real_sample_sequence(mmface4d_sample_dir):
    sequence = DatasetSequence(mmface4d_sample_dir / "000337")
    assert sequence.camera_indices == [0, 1, 2]
    assert sequence.n_frames == 67
    assert [c.intrinsics.serial_number for c in sequence.cameras] == ["000250714112", "000308314112", "000311214112"]
    assert sequence.audio_duration_s == pytest.approx(67 / 30, abs=1 / 30)


def test_sequence_not_found(tmp_path):
    with pytest.raises(InputError, match="no files named nothing_"):
        DatasetSequence(tmp_path / "nothing")
