"""Gray16 FFV1 readers: decoding modes, frame-exact corruption reports on every path, random access."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmface4d_stream.errors import InputError
from mmface4d_stream.formats.gray16_video import (
    DECODER_THREADS, Decoding, Gray16VideoReader, Gray16VideoWriter, choose_decoding)


def _write(path: Path, frames: np.ndarray, **codec_options: str) -> None:
    with Gray16VideoWriter(path, frames.shape[2], frames.shape[1], codec_options=codec_options or None) as writer:
        for frame in frames:
            writer.write(frame)


def _smooth_frames(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint16 (n, height, width) frames with structure (compressible) and per-frame differences."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = (x * 37 + y * 11).astype(np.int64)
    frames = [(base + i * 101 + rng.integers(0, 64, (height, width))) % 65536 for i in range(n)]
    return np.asarray(frames, dtype=np.uint16)


def _read_until_error(reader: Gray16VideoReader) -> tuple[list[np.ndarray], InputError]:
    frames = []
    with pytest.raises(InputError) as caught:
        for frame in reader:
            frames.append(frame)
    return frames, caught.value


def test_decoding_mode_choice():
    assert choose_decoding(189, 189, True, 3) is Decoding.FRAME_THREADS_CRC
    assert choose_decoding(189, 189, False, 3) is Decoding.SINGLE_THREAD_LOG
    assert choose_decoding(189, 189, True, 1) is Decoding.SINGLE_THREAD_CRC
    assert choose_decoding(1920, 1080, True, 3) is Decoding.SLICE_THREADS_CRC
    assert choose_decoding(1920, 1080, False, 3) is Decoding.SLICE_THREADS_UNCHECKED
    assert choose_decoding(1920, 1080, False, 1) is Decoding.SINGLE_THREAD_LOG
    assert Decoding.FRAME_THREADS_CRC.checks_crcs and not Decoding.SINGLE_THREAD_LOG.checks_crcs


@pytest.mark.parametrize("threads", sorted({1, 2, 3, DECODER_THREADS}))
def test_small_frames_stream_and_seek_exactly(tmp_path, threads):
    frames = _smooth_frames(25, 40, 48)
    _write(tmp_path / "v.nut", frames, g="1")
    with Gray16VideoReader(tmp_path / "v.nut", threads=threads) as reader:
        assert reader.slice_crcs
        assert reader.decoding is (Decoding.SINGLE_THREAD_CRC if threads == 1 else Decoding.FRAME_THREADS_CRC)
        np.testing.assert_array_equal(np.stack(list(reader)), frames)
        for index in (24, 0, 13, 12, -1, 5):
            np.testing.assert_array_equal(reader[index], frames[index])
        # Iterating again after random access starts from the first frame.
        np.testing.assert_array_equal(np.stack(list(reader)), frames)


def test_seek_to_frames_between_keyframes(tmp_path):
    frames = _smooth_frames(20, 30, 30, seed=1)
    _write(tmp_path / "v.nut", frames, g="6")
    with Gray16VideoReader(tmp_path / "v.nut") as reader:
        assert reader.decoding is Decoding.FRAME_THREADS_CRC
        for index in (19, 7, 6, 5, 0, 11):
            np.testing.assert_array_equal(reader[index], frames[index])


@pytest.mark.parametrize("threads", [1, DECODER_THREADS])
def test_damaged_packet_is_named_after_the_good_frames(tmp_path, threads, flip_in_packet):
    frames = _smooth_frames(20, 40, 40)
    _write(tmp_path / "v.nut", frames, g="1")
    flip_in_packet(tmp_path / "v.nut", 11, xor=0x24)
    with Gray16VideoReader(tmp_path / "v.nut", threads=threads) as reader:
        assert reader.decoding.checks_crcs
        good, error = _read_until_error(reader)
        assert error.frame == 11 and error.path == str(tmp_path / "v.nut")
        assert "FFV1 slice CRC mismatch in slice" in str(error)
        np.testing.assert_array_equal(np.stack(good), frames[:11])
        with pytest.raises(InputError, match=r"\(frame 11\): corrupt frame"):
            reader[11]
        np.testing.assert_array_equal(reader[12], frames[12])


def test_damaged_first_packet_falls_back_to_the_decoder_log(tmp_path, flip_in_packet):
    frames = _smooth_frames(6, 40, 40)
    _write(tmp_path / "v.nut", frames, g="1")
    flip_in_packet(tmp_path / "v.nut", 0, xor=0x24)
    with Gray16VideoReader(tmp_path / "v.nut") as reader:
        # The first packet decides whether the file carries CRCs; damaged, it says no: the slow path,
        # which still sees the damage through FFmpeg's own CRC check.
        assert not reader.slice_crcs and reader.decoding is Decoding.SINGLE_THREAD_LOG
        good, error = _read_until_error(reader)
        assert good == [] and error.frame == 0
        assert "slice CRC mismatch" in str(error)
        np.testing.assert_array_equal(reader[3], frames[3])


def test_large_frames_use_slice_threads_with_crc_checks(tmp_path, flip_in_packet):
    frames = _smooth_frames(6, 540, 640, seed=2)
    _write(tmp_path / "d.nut", frames)
    with Gray16VideoReader(tmp_path / "d.nut") as reader:
        assert reader.decoding is Decoding.SLICE_THREADS_CRC
        np.testing.assert_array_equal(np.stack(list(reader)), frames)
        np.testing.assert_array_equal(reader[4], frames[4])
    flip_in_packet(tmp_path / "d.nut", 4, xor=0x24)
    with Gray16VideoReader(tmp_path / "d.nut") as reader:
        good, error = _read_until_error(reader)
        assert error.frame == 4 and len(good) == 4


def test_files_without_crcs_are_watched_through_the_log(tmp_path):
    frames = _smooth_frames(8, 40, 40)
    _write(tmp_path / "v.nut", frames, g="1", slicecrc="0")
    with Gray16VideoReader(tmp_path / "v.nut") as reader:
        assert not reader.slice_crcs and reader.decoding is Decoding.SINGLE_THREAD_LOG
        np.testing.assert_array_equal(np.stack(list(reader)), frames)
