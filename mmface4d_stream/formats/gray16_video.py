"""16-bit single-channel video streams (FFV1, gray16le) in NUT containers, read and written frame by frame.

Both MMFace4D depth videos (`<seq>_<cam>.nut`, millimetres) and the three files of a mesh sequence
(`<prefix>_{0,1,2}.nut`, quantized coordinates) are this kind of stream. The classes here know nothing
of what the samples mean; `depth_nut` and `mesh_nut` give them meaning.

Robustness rules:
- Writers are context managers and always write the container trailer when leaving the block, on
  success, on an exception and on Ctrl-C, so what was written stays decodable.
- A file whose writer was killed (no trailer) is read up to its last complete frame.
- Readers scan packet timestamps once at open (demuxing only, no decoding, constant memory), which
  gives the frame count and random access by frame index.
- A damaged frame is an `InputError` naming the file and the frame. Files with FFV1 slice CRCs (what
  our writers write) are checked packet by packet in Python before decoding (`ffv1_crc`), which lets
  FFmpeg decode on its own threads; other files (the released dataset's FFV1 version 1) decode on one
  thread with FFmpeg's error log watched per frame.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
from pathlib import Path
from typing import Iterator

import av
import av.logging
import numpy as np

from mmface4d_stream.errors import InputError
from mmface4d_stream.formats.ffv1_crc import carries_slice_crcs, check_slices
from mmface4d_stream.formats.video_writer import VideoWriter

log = logging.getLogger(__name__)

# NUT's index start code ('N', 'X' + 6 bytes): the muxer writes an index at the end of a finished file;
# a file without one was not finalized (its writer was killed), so a damaged last packet is truncation.
_NUT_INDEX_STARTCODE = bytes.fromhex("4e58dd672f23e64e")
_TAIL_SEARCH_BYTES = 1 << 16
# Frame-accurate corruption detection: level 3 FFV1 carries a CRC per slice, which readers check
# before decoding (FFmpeg's decoder would only log a damaged slice and conceal it).
FFV1_LEVEL = 3
LARGE_FRAME_PIXELS = 512 * 512
# FFmpeg frame threads per small-frame decoder. A mesh triplet runs three such decoders at once; on
# 2 cores, 600 frames: 2 threads ~229, 3 ~240, 4 ~244 meshes/s, ~7.85 ms CPU per mesh in every case,
# so 4 is within ~5% of both cores' ceiling (benchmarks/codec.py --threads N).
DECODER_THREADS = 4
FFV1_DEFAULT_OPTIONS = {"slicecrc": "1"}


class Gray16VideoWriter(VideoWriter):
    """Write uint16 (H, W) frames to a NUT file as FFV1 gray16le at a fixed frame rate.

    Level 3 FFV1 with slice CRCs (`FFV1_DEFAULT_OPTIONS`, overridable by `codec_options`). With
    `atomic=True` frames go to a hidden temporary file beside `path`, renamed to `path` by a
    successful `close()`; a failed close removes it and `path` is untouched.
    """

    def __init__(self, path: str | os.PathLike, width: int, height: int, fps: int = 30, atomic: bool = False,
                 codec_options: dict[str, str] | None = None, keep_on_write_error: bool = False):
        super().__init__(path, width, height, fps, container_format="nut", codec="ffv1", pix_fmt="gray16le",
                         input_format="gray16le", atomic=atomic, level=FFV1_LEVEL,
                         options={**FFV1_DEFAULT_OPTIONS, **(codec_options or {})},
                         keep_on_write_error=keep_on_write_error)

    def write(self, frame: np.ndarray) -> None:
        """Append one frame: uint16 array of shape (height, width)."""
        if frame.shape != (self.height, self.width) or frame.dtype != np.uint16:
            raise ValueError(
                f"{self.path}: expected a uint16 frame of shape {(self.height, self.width)}, "
                f"got {frame.dtype} {frame.shape}"
            )
        self._encode(frame)


@contextlib.contextmanager
def ffmpeg_log() -> Iterator[list[tuple[int, str, str]]]:
    """Collect FFmpeg's log lines (level, source, text) emitted inside the block; see `error_lines`.

    PyAV routes FFmpeg's log through Python only while a level is set, and its callback then needs
    the GIL: an FFmpeg worker thread that logs while the main thread holds the GIL (e.g. freeing a
    threaded decoder) would deadlock. So the callback is installed only for the block, and only
    around demuxing and single-threaded decoding. Threaded decoders of other readers may be busy
    meanwhile; they log only errors at this level, and their packets passed the CRC check.
    """
    previous = av.logging.get_level()
    if previous is None or previous < av.logging.ERROR:
        av.logging.set_level(av.logging.ERROR)
    # PyAV drops a line identical to the previous one, which would hide the same damage seen twice.
    av.logging.set_skip_repeated(False)
    try:
        with av.logging.Capture(local=False) as messages:
            yield messages
    finally:
        av.logging.set_level(previous)


def error_lines(messages: list[tuple[int, str, str]]) -> list[str]:
    """The error-level texts among captured FFmpeg log lines."""
    return [text.strip() for level, _, text in messages if level <= av.logging.ERROR]


def nut_is_finalized(path: str | os.PathLike) -> bool:
    """True when the NUT file ends with the index its muxer writes on a clean close."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        handle.seek(max(0, size - _TAIL_SEARCH_BYTES))
        return _NUT_INDEX_STARTCODE in handle.read()


class Decoding(str, enum.Enum):
    """How a reader runs FFmpeg's decoder and catches a damaged frame."""

    SINGLE_THREAD_CRC = "one thread, slice CRCs checked"
    SINGLE_THREAD_LOG = "one thread, FFmpeg's error log watched"
    FRAME_THREADS_CRC = "frame threads, slice CRCs checked"
    SLICE_THREADS_CRC = "slice threads, slice CRCs checked"
    SLICE_THREADS_UNCHECKED = "slice threads, no per-frame check"

    @property
    def checks_crcs(self) -> bool:
        return self in (Decoding.SINGLE_THREAD_CRC, Decoding.FRAME_THREADS_CRC, Decoding.SLICE_THREADS_CRC)


def choose_decoding(width: int, height: int, slice_crcs: bool, threads: int) -> Decoding:
    """The decoding mode for a stream of (width, height) frames.

    Small frames (mesh coordinates) gain from frame threads, full-HD depth from slice
    threads (frame threads would buffer several 4 MB frames). Threads and FFmpeg's log callback must
    not meet (see `ffmpeg_log`), so a file without slice CRCs decodes on one thread unless it is
    large, where speed wins over the per-frame check, as before CRCs were checked.
    """
    large = width * height > LARGE_FRAME_PIXELS
    if threads <= 1:
        return Decoding.SINGLE_THREAD_CRC if slice_crcs else Decoding.SINGLE_THREAD_LOG
    if large:
        return Decoding.SLICE_THREADS_CRC if slice_crcs else Decoding.SLICE_THREADS_UNCHECKED
    return Decoding.FRAME_THREADS_CRC if slice_crcs else Decoding.SINGLE_THREAD_LOG


class Gray16VideoReader:
    """Read a 16-bit single-channel video (NUT/FFV1 or any container PyAV decodes to gray16).

    Iterating yields uint16 (height, width) frames in order; `reader[i]` decodes frame `i` (seeking
    to the previous keyframe). Memory is constant in the number of frames.

    Args:
        path: the video file.
        threads: FFmpeg decoder threads for small frames when the file carries FFV1 slice CRCs
            (frame threads; 1 decodes on the calling thread). Large frames use slice threads, one
            per core, unless `threads` is 1. See `choose_decoding`.

    Attributes:
        slice_crcs: the file carries FFV1 slice CRCs (judged from its first packet).
        decoding: the `Decoding` mode in use.
    """

    def __init__(self, path: str | os.PathLike, threads: int = DECODER_THREADS):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError("file not found", self.path)
        if self.path.stat().st_size == 0:
            raise InputError("file is empty", self.path)
        try:
            # NUT reads its index at open: damage there shows only as logged errors.
            with ffmpeg_log() as open_messages:
                self._container = av.open(str(self.path), mode="r")
        except av.error.FFmpegError as exc:
            raise InputError(f"not a readable video file ({exc.strerror or exc})", self.path) from None
        self._open_errors = error_lines(open_messages)
        if not self._container.streams.video:
            self._container.close()
            raise InputError("contains no video stream", self.path)
        self._stream = self._container.streams.video[0]
        self.width = self._stream.codec_context.width
        self.height = self._stream.codec_context.height
        rate = self._stream.average_rate or self._stream.guessed_rate or self._stream.base_rate
        self.fps = float(rate) if rate else 30.0
        self.finalized = nut_is_finalized(self.path) if self.path.suffix == ".nut" else True
        self.slice_crcs = False
        self._pts, self._keyframe_pts = self._scan_packets()
        self.decoding = choose_decoding(self.width, self.height, self.slice_crcs, threads)
        self._threads = threads
        self._configure_decoder()

    @property
    def threaded(self) -> bool:
        """FFmpeg decodes on its own threads (and FFmpeg's log is never watched)."""
        return self.decoding not in (Decoding.SINGLE_THREAD_CRC, Decoding.SINGLE_THREAD_LOG)

    def _configure_decoder(self) -> None:
        """Set the stream's decoder threads; must run before its first decode."""
        codec = self._stream.codec_context
        if self.decoding is Decoding.FRAME_THREADS_CRC:
            codec.thread_type = "FRAME"
            codec.thread_count = self._threads
        elif self.threaded:
            codec.thread_type = "SLICE"
            codec.thread_count = 0  # one per core
        else:
            codec.thread_count = 1

    def _scan_packets(self) -> tuple[np.ndarray, np.ndarray]:
        """Timestamps of every packet and of the keyframes, from demuxing alone; sets `slice_crcs`."""
        pts: list[int] = []
        keys: list[int] = []
        first_error_at: int | None = 0 if self._open_errors else None
        is_ffv1 = self._stream.codec_context.name == "ffv1"
        with ffmpeg_log() as messages:
            try:
                for packet in self._container.demux(self._stream):
                    if first_error_at is None and any(m[0] <= av.logging.ERROR for m in messages):
                        first_error_at = len(pts)
                    if packet.size == 0 or packet.pts is None:
                        continue
                    if not pts and is_ffv1:
                        self.slice_crcs = carries_slice_crcs(packet)
                    pts.append(packet.pts)
                    if packet.is_keyframe:
                        keys.append(packet.pts)
            except av.error.FFmpegError as exc:
                messages.append((av.logging.ERROR, "", str(exc)))
        errors = self._open_errors + error_lines(messages)
        if errors and self.finalized:
            at = len(pts) if first_error_at is None else first_error_at
            raise InputError(f"corrupt container ({errors[0]})", self.path, frame=at)
        if errors:
            log.warning("%s: not finalized, reading the complete frames", self.path)
        if not self.finalized and pts:
            # The last packet of an unfinished file may be cut short: never trust it.
            pts = pts[:-1]
            keys = [k for k in keys if k <= pts[-1]] if pts else []
        self._rewind()
        return np.asarray(pts, dtype=np.int64), np.asarray(keys, dtype=np.int64)

    def _rewind(self) -> None:
        try:
            self._container.seek(0, stream=self._stream, backward=True, any_frame=False)
        except av.error.FFmpegError:
            # Some unfinished files cannot seek; reopening gets back to the start.
            self._container.close()
            self._container = av.open(str(self.path), mode="r")
            self._stream = self._container.streams.video[0]
            if hasattr(self, "decoding"):
                self._configure_decoder()

    def __len__(self) -> int:
        return int(self._pts.size)

    @property
    def n_frames(self) -> int:
        return len(self)

    def _decode_range(self, start_pts: int, stop_pts: int) -> Iterator[tuple[int, np.ndarray]]:
        """Decode the packets from `start_pts` (a keyframe) through `stop_pts`, from the current position.

        Packets before `start_pts` (a seek may land a little early) are skipped without decoding.

        Yields (pts, uint16 (H, W)) pairs. Threaded decoders return frames a few packets late, so the
        decoder is drained at the end (and before reporting a damaged packet, so that every frame
        before the damage is yielded first); the next seek resets it.
        """
        codec = self._stream.codec_context
        try:
            for packet in self._container.demux(self._stream):
                if packet.size == 0 or packet.pts is None:
                    continue  # the demuxer's final empty packet; the drain below flushes the decoder
                if packet.pts < start_pts:
                    continue
                if packet.pts > stop_pts:
                    break
                if self.decoding.checks_crcs:
                    check = check_slices(packet)
                    if not check.intact:
                        yield from self._frames(codec.decode(None))
                        raise InputError(f"corrupt frame ({check.describe()})", self.path,
                                         frame=self._frame_index(packet.pts))
                    frames = codec.decode(packet)
                elif self.decoding is Decoding.SINGLE_THREAD_LOG:
                    # A capture per packet, never held across a yield: readers are interleaved generators.
                    with ffmpeg_log() as messages:
                        frames = codec.decode(packet)
                    errors = error_lines(messages)
                    if errors:
                        raise InputError(f"corrupt frame ({'; '.join(errors[:2])})", self.path,
                                         frame=self._frame_index(packet.pts))
                else:
                    frames = codec.decode(packet)
                yield from self._frames(frames)
            yield from self._frames(codec.decode(None))
        except av.error.FFmpegError as exc:
            frame_index = self._frame_index(self._last_good_pts + 1)
            raise InputError(f"corrupt data ({exc})", self.path, frame=frame_index) from None

    def _frames(self, frames: list) -> Iterator[tuple[int, np.ndarray]]:
        for frame in frames:
            yield frame.pts, frame.to_ndarray().reshape(self.height, self.width)

    def _frame_index(self, pts: int) -> int:
        """Index of the first frame at or after `pts`."""
        return int(np.searchsorted(self._pts, pts)) if self._pts.size else 0

    def __iter__(self) -> Iterator[np.ndarray]:
        self._rewind()
        self._last_good_pts = -1
        expected = 0
        if not len(self):
            return
        for pts, frame in self._decode_range(int(self._pts[0]), int(self._pts[-1])):
            if expected >= len(self):
                break
            self._last_good_pts = pts
            expected += 1
            yield frame
        if expected < len(self):
            raise InputError(f"only {expected} of {len(self)} frames decode", self.path, frame=expected)

    def __getitem__(self, index: int) -> np.ndarray:
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"{self.path}: frame {index} out of range (0..{n - 1})")
        target = int(self._pts[index])
        key_at = int(np.searchsorted(self._keyframe_pts, target, side="right")) - 1
        seek_pts = int(self._keyframe_pts[key_at]) if key_at >= 0 else int(self._pts[0])
        self._container.seek(seek_pts, stream=self._stream, backward=True, any_frame=False)
        self._last_good_pts = seek_pts - 1
        for pts, frame in self._decode_range(seek_pts, target):
            self._last_good_pts = pts
            if pts == target:
                return frame
            if pts > target:
                break
        raise InputError("frame could not be decoded after seeking", self.path, frame=index)

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> "Gray16VideoReader":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
