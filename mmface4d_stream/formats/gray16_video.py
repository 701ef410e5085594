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
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterator

import av
import av.logging
import numpy as np

from mmface4d_stream.errors import InputError
from mmface4d_stream.formats.video_writer import VideoWriter

log = logging.getLogger(__name__)

# NUT's index start code ('N', 'X' + 6 bytes): the muxer writes an index at the end of a finished file;
# a file without one was not finalized (its writer was killed), so a damaged last packet is truncation.
_NUT_INDEX_STARTCODE = bytes.fromhex("4e58dd672f23e64e")
_TAIL_SEARCH_BYTES = 1 << 16
# Frame-accurate corruption detection: level 3 FFV1 carries a CRC per slice. FFmpeg's decoder only
# logs a damaged slice (and conceals it), so readers watch the decoder's error log.
FFV1_LEVEL = 3
LARGE_FRAME_PIXELS = 512 * 512
FFV1_DEFAULT_OPTIONS = {"slicecrc": "1"}


class Gray16VideoWriter(VideoWriter):
    """Write uint16 (H, W) frames to a NUT file as FFV1 gray16le at a fixed frame rate.

    Level 3 FFV1 with slice CRCs (`FFV1_DEFAULT_OPTIONS`, overridable by `codec_options`). With
    `atomic=True` frames go to a hidden temporary file beside `path`, renamed to `path` by a
    successful `close()`; on error the temporary file is kept (decodable) and `path` is untouched.
    """

    def __init__(self, path: str | os.PathLike, width: int, height: int, fps: int = 30, atomic: bool = False,
                 codec_options: dict[str, str] | None = None):
        super().__init__(path, width, height, fps, container_format="nut", codec="ffv1", pix_fmt="gray16le",
                         input_format="gray16le", atomic=atomic, level=FFV1_LEVEL,
                         options={**FFV1_DEFAULT_OPTIONS, **(codec_options or {})})

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
    single-threaded decoders use this.
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


class Gray16VideoReader:
    """Read a 16-bit single-channel video (NUT/FFV1 or any container PyAV decodes to gray16).

    Iterating yields uint16 (height, width) frames in order; `reader[i]` decodes frame `i` (seeking
    to the previous keyframe). Memory is constant in the number of frames.
    """

    def __init__(self, path: str | os.PathLike):
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
        # Small frames (mesh coordinates) decode on one thread, where each damaged frame is caught
        # from the decoder's error log. Full-HD depth decodes ~2.5x faster with FFmpeg's slice
        # threads; those frames are not log-checked (see `ffmpeg_log`: threads + log = deadlock).
        large = self._stream.codec_context.width * self._stream.codec_context.height > LARGE_FRAME_PIXELS
        self.threaded = large
        self._stream.codec_context.thread_count = 0 if large else 1
        if large:
            self._stream.codec_context.thread_type = "SLICE"  # frame threads would delay output frames
        self.width = self._stream.codec_context.width
        self.height = self._stream.codec_context.height
        rate = self._stream.average_rate or self._stream.guessed_rate or self._stream.base_rate
        self.fps = float(rate) if rate else 30.0
        self.finalized = nut_is_finalized(self.path) if self.path.suffix == ".nut" else True
        self._pts, self._keyframe_pts = self._scan_packets()

    def _scan_packets(self) -> tuple[np.ndarray, np.ndarray]:
        """Timestamps of every packet and of the keyframes, from demuxing alone."""
        pts: list[int] = []
        keys: list[int] = []
        first_error_at: int | None = 0 if self._open_errors else None
        with ffmpeg_log() as messages:
            try:
                for packet in self._container.demux(self._stream):
                    if first_error_at is None and any(m[0] <= av.logging.ERROR for m in messages):
                        first_error_at = len(pts)
                    if packet.size == 0 or packet.pts is None:
                        continue
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

    def __len__(self) -> int:
        return int(self._pts.size)

    @property
    def n_frames(self) -> int:
        return len(self)

    def _decode_from_current(self) -> Iterator[tuple[int, np.ndarray]]:
        """Decode forward from the container's current position: (pts, uint16 (H, W)) pairs."""
        last_pts = int(self._pts[-1]) if self._pts.size else -1
        try:
            for packet in self._container.demux(self._stream):
                if packet.size == 0 or packet.pts is None:
                    continue
                if packet.pts > last_pts:
                    break
                if self.threaded:
                    frames = packet.decode()
                    errors = []
                else:
                    # A capture per packet, never held across a yield: readers are interleaved generators.
                    with ffmpeg_log() as messages:
                        frames = packet.decode()
                    errors = error_lines(messages)
                if errors:
                    raise InputError(f"corrupt frame ({'; '.join(errors[:2])})", self.path,
                                     frame=self._frame_index(packet.pts))
                for frame in frames:
                    yield frame.pts, frame.to_ndarray().reshape(self.height, self.width)
        except av.error.FFmpegError as exc:
            frame_index = self._frame_index(self._last_good_pts + 1)
            raise InputError(f"corrupt data ({exc})", self.path, frame=frame_index) from None

    def _frame_index(self, pts: int) -> int:
        """Index of the first frame at or after `pts`."""
        return int(np.searchsorted(self._pts, pts)) if self._pts.size else 0

    def __iter__(self) -> Iterator[np.ndarray]:
        self._rewind()
        self._last_good_pts = -1
        expected = 0
        for pts, frame in self._decode_from_current():
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
        for pts, frame in self._decode_from_current():
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


def _decode_into_queue(path: str, n_frames: int, queue) -> None:
    """Worker-process body: decode `n_frames` frames of `path` into `queue`, then a sentinel."""
    try:
        with Gray16VideoReader(path) as reader:
            for index, frame in enumerate(reader):
                if index >= n_frames:
                    break
                queue.put(("frame", frame))
        queue.put(("done", None))
    except InputError as exc:
        queue.put(("error", (str(exc),)))
    except Exception as exc:  # a bug in the worker: pass its text to the parent
        queue.put(("error", (f"{path}: decoder process failed: {exc!r}",)))


def _get_from_worker(queue, worker, path: Path, poll_s: float = 1.0):
    """Next message of a decoder process, or an error if the process died without sending one."""
    import queue as queue_module

    while True:
        try:
            return queue.get(timeout=poll_s)
        except queue_module.Empty:
            if not worker.is_alive():
                return ("error", (f"{path}: decoder process exited with status {worker.exitcode}",))


def iterate_in_processes(paths: list[Path], n_frames: int, queue_depth: int = 8) -> Iterator[tuple[np.ndarray, ...]]:
    """Decode several videos in lock step, one process each, yielding tuples of uint16 frames.

    PyAV holds the GIL while FFmpeg decodes, so threads cannot overlap the decoders; processes can.
    Bounded queues keep memory constant (at most `queue_depth` frames ahead per file).
    """
    import multiprocessing as mp

    # "spawn": the parent may hold threads (Ray, thread pools) that make fork unsafe.
    context = mp.get_context("spawn")
    queues = [context.Queue(maxsize=queue_depth) for _ in paths]
    workers = [
        context.Process(target=_decode_into_queue, args=(str(p), n_frames, q), daemon=True)
        for p, q in zip(paths, queues)
    ]
    for worker in workers:
        worker.start()
    try:
        for _ in range(n_frames):
            frames = []
            for path, queue, worker in zip(paths, queues, workers):
                kind, payload = _get_from_worker(queue, worker, path)
                if kind == "error":
                    raise InputError(payload[0])
                if kind != "frame":
                    raise InputError("ended before the expected frame count", path)
                frames.append(payload)
            yield tuple(frames)
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
            worker.join(timeout=5)
        for queue in queues:
            queue.close()
            queue.cancel_join_thread()
