"""The frame-by-frame video writer both MMFace4D video kinds share (FFV1/NUT and H.264/mp4).

A context manager: leaving the block flushes the encoder and writes the container trailer, also on
an exception or Ctrl-C, so every frame written stays decodable. With `atomic=True` frames go to a
hidden temporary file beside the target, renamed into place only by a successful close and removed
by a failed one. Packets reach the file as they are muxed (`flush_packets`), so a killed process
leaves every frame encoded before it in the file (readable as truncated), not a buffer's worth less.

When the location cannot take the file (full disk, read-only, no permission, missing folder) the
writer raises `InputError` naming the target path, and its file is removed: the tail of a file
that hit a full disk is lost anyway, and a half-written output must not look like a result.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from mmface4d_stream.formats.output_files import is_write_error, output_error, remove_quietly, temporary_path


class VideoWriter:
    """Encode `(height, width[, 3])` arrays of one pixel format into one video stream, in order."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, fps: int, *, container_format: str,
                 codec: str, pix_fmt: str, input_format: str, atomic: bool = False,
                 options: dict[str, str] | None = None, level: int | None = None, keep_on_write_error: bool = False,
                 muxer_options: dict[str, str] | None = None):
        if width <= 0 or height <= 0:
            raise ValueError(f"frame size must be positive, got {width}x{height}")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.path = Path(path)
        self.width, self.height, self.fps = int(width), int(height), int(fps)
        self.atomic = atomic
        self._input_format = input_format
        self._write_path = temporary_path(self.path) if atomic else self.path
        self.write_error: OSError | None = None
        # A recording keeps what reached the disk before it filled (renamed into place as usual).
        self.keep_on_write_error = keep_on_write_error
        try:
            self._write_path.parent.mkdir(parents=True, exist_ok=True)
            # Each muxed packet goes to the file at once: a SIGKILL then loses no more than the
            # encoder's own delay (FFV1 and our x264 settings: none or a few frames).
            self._container = av.open(str(self._write_path), mode="w", format=container_format,
                                      container_options={"flush_packets": "1", **(muxer_options or {})})
        except OSError as exc:
            if is_write_error(exc):
                raise output_error(exc, self.path) from None
            raise
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
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        except OSError as exc:
            if not is_write_error(exc):
                raise
            self.write_error = exc
            raise output_error(exc, self.path) from None
        self.frames_written += 1

    def close(self, success: bool = True) -> None:
        """Flush the encoder and write the trailer; rename into place when atomic and successful.

        A failed close (`success=False`) of an atomic writer removes its temporary file; any writer
        that met a write error (full disk, ...) removes its file and raises `InputError` if the
        error happens here.
        """
        if self._closed:
            return
        self._closed = True
        try:
            try:
                if self.write_error is None:
                    for packet in self._stream.encode(None):
                        self._container.mux(packet)
            finally:
                self._container.close()
        except OSError as exc:
            if not is_write_error(exc):
                raise
            first = self.write_error is None
            self.write_error = self.write_error or exc
            if first and not self.keep_on_write_error:
                remove_quietly(self._write_path)
                raise output_error(exc, self.path) from None
        if self.write_error is not None and self.keep_on_write_error:
            if self.atomic:
                os.replace(self._write_path, self.path)
        elif self.write_error is not None or (self.atomic and not success):
            remove_quietly(self._write_path)
        elif self.atomic:
            os.replace(self._write_path, self.path)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(success=exc_type is None)
