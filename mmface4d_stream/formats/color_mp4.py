"""MMFace4D color videos `<seq>_<cam>.mp4`: H.264 (libx264, crf 10, yuv420p), 30 fps, RGB frames."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from mmface4d_stream.errors import InputError
from mmface4d_stream.formats.video_writer import VideoWriter


class ColorMp4Writer(VideoWriter):
    """Stream RGB frames, uint8 (height, width, 3), to an H.264 mp4 (libx264, yuv420p; even sizes).

    A context manager: the file is finalized (moov written) when leaving the block, also on error.
    With `atomic=True` the file is written under a hidden temporary name and renamed on success.

    A plain mp4 is unreadable until its trailer is written: a killed writer leaves nothing. With
    `fragment_s` the file is a fragmented mp4 (an empty moov up front, then a fragment at least
    every `fragment_s` seconds) encoded without lookahead (`tune=zerolatency`), so a killed writer
    leaves every frame up to the last fragment readable: what a live recording needs.
    """

    def __init__(self, path: str | os.PathLike, width: int, height: int, fps: int = 30, crf: int = 10,
                 atomic: bool = False, preset: str = "veryfast", keep_on_write_error: bool = False,
                 fragment_s: float | None = None):
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise ValueError(f"yuv420p needs a positive even frame size, got {width}x{height}")
        options = {"crf": str(crf), "preset": preset}
        muxer = None
        if fragment_s is not None:
            if not fragment_s > 0:
                raise ValueError(f"fragment_s must be positive, got {fragment_s}")
            options["tune"] = "zerolatency"
            muxer = {"movflags": "empty_moov+default_base_moof+frag_keyframe",
                     "frag_duration": str(int(fragment_s * 1_000_000))}
        super().__init__(path, width, height, fps, container_format="mp4", codec="libx264", pix_fmt="yuv420p",
                         input_format="rgb24", atomic=atomic, options=options,
                         keep_on_write_error=keep_on_write_error, muxer_options=muxer)

    def write(self, rgb: np.ndarray) -> None:
        """Append one frame: uint8 (height, width, 3) RGB."""
        if rgb.shape != (self.height, self.width, 3) or rgb.dtype != np.uint8:
            raise ValueError(f"{self.path}: expected uint8 RGB of shape {(self.height, self.width, 3)}, "
                             f"got {rgb.dtype} {rgb.shape}")
        self._encode(rgb)


class ColorMp4Reader:
    """Stream RGB frames, uint8 (height, width, 3), from a video file PyAV can decode."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError("file not found", self.path)
        try:
            self._container = av.open(str(self.path))
        except av.error.FFmpegError as exc:
            raise InputError(f"not a readable video file ({exc})", self.path) from None
        if not self._container.streams.video:
            self._container.close()
            raise InputError("contains no video stream", self.path)
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        self.width = self._stream.codec_context.width
        self.height = self._stream.codec_context.height
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(rate) if rate else 30.0
        self._n_frames = self._stream.frames or self._count_packets()

    def _count_packets(self) -> int:
        count = sum(1 for p in self._container.demux(self._stream) if p.size)
        self._container.seek(0, stream=self._stream)
        return count

    def __len__(self) -> int:
        return int(self._n_frames)

    @property
    def n_frames(self) -> int:
        return len(self)

    def __iter__(self) -> Iterator[np.ndarray]:
        self._container.seek(0, stream=self._stream)
        index = 0
        try:
            for frame in self._container.decode(self._stream):
                yield frame.to_ndarray(format="rgb24")
                index += 1
        except av.error.FFmpegError as exc:
            raise InputError(f"corrupt data ({exc})", self.path, frame=index) from None

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> "ColorMp4Reader":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
