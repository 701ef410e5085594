"""The frame-by-frame video writer both MMFace4D video kinds share (FFV1/NUT and H.264/mp4).

A context manager: leaving the block flushes the encoder and writes the container trailer, also on
an exception or Ctrl-C, so every frame written stays decodable. With `atomic=True` frames go to a
hidden temporary file beside the target, renamed into place only by a successful close.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def temporary_path(path: Path) -> Path:
    """Hidden sibling `.<name>.partial<suffix>` (the suffix kept so muxers can still guess formats)."""
    return path.with_name(f".{path.stem}.partial{path.suffix}")


class VideoWriter:
    """Encode `(height, width[, 3])` arrays of one pixel format into one video stream, in order."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, fps: int, *, container_format: str,
                 codec: str, pix_fmt: str, input_format: str, atomic: bool = False,
                 options: dict[str, str] | None = None, level: int | None = None):
        if width <= 0 or height <= 0:
            raise ValueError(f"frame size must be positive, got {width}x{height}")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.path = Path(path)
        self.width, self.height, self.fps = int(width), int(height), int(fps)
        self.atomic = atomic
        self._input_format = input_format
        self._write_path = temporary_path(self.path) if atomic else self.path
        self._write_path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self._write_path), mode="w", format=container_format)
        self._stream = self._container.add_stream(codec, rate=self.fps)
        self._stream.width, self._stream.height = self.width, self.height
        self._stream.pix_fmt = pix_fmt
        self._stream.codec_context.time_base = Fraction(1, self.fps)
        if level is not None:
            self._stream.codec_context.level = level
        self._stream.codec_context.options = dict(options or {})
        self.frames_written = 0
        self._closed = False

    def _encode(self, array: np.ndarray) -> None:
        if self._closed:
            raise ValueError(f"{self.path}: writer is closed")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format=self._input_format)
        frame.pts = self.frames_written
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames_written += 1

    def close(self, success: bool = True) -> None:
        """Flush the encoder and write the trailer; rename into place when atomic and successful."""
        if self._closed:
            return
        self._closed = True
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        finally:
            self._container.close()
        if self.atomic and success:
            os.replace(self._write_path, self.path)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(success=exc_type is None)
