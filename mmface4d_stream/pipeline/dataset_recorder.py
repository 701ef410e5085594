"""Dataset recording of a live session: what the cameras saw, as a dataset sequence.

`DatasetRecorder` writes mp4, depth nut and json per camera; the microphone's wav, aligned to the
first frame set, is `audio.recorder`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from mmface4d_stream.errors import InputError
from mmface4d_stream.pipeline.sources import DepthRegistrations
from mmface4d_stream.frame_records import FrameSet

# Colour files of a recording are fragmented mp4s, a fragment every this many seconds.
RECORDING_FRAGMENT_S = 0.5


class DatasetRecorder:
    """Write every frame set as a dataset sequence `<out_dir>/<name>_<cam>.{mp4,nut,json}`.

    Intrinsics are the cameras' pinhole parameters (the dataset's json keeps no distortion);
    `stream_length_usec` is filled in at close. Writers open at the first frame set (its size).
    Raw depth (MKV replay) is registered to color first, as the dataset stores it.

    The mp4 and nut files are written under their final names as frames arrive (each packet
    reaches the file at once; the mp4 is fragmented every `RECORDING_FRAGMENT_S`), so a capture
    killed outright keeps all but its last fraction of a second; the json files are written at
    close, so their absence marks a capture that did not finish. A full disk keeps what was written.
    """

    def __init__(self, out_dir: str | os.PathLike, name: str, serials: Sequence[str], intrinsics: Sequence,
                 fps: int = 30, color_mode: str = "BGRA_1080P", depth_mode: str = "NFOV_UNBINNED"):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.name, self.serials, self.intrinsics = name, list(serials), list(intrinsics)
        self.fps, self.color_mode, self.depth_mode = int(fps), color_mode, depth_mode
        self._color: list = []
        self._depth: list = []
        self.frames = 0
        # Host monotonic time of the first frame set written (the audio is aligned to it).
        self.first_host_ns: int | None = None
        self._first_us: int | None = None
        self._last_us: int | None = None
        self._registrations = DepthRegistrations()

    def prefix(self, camera: int) -> Path:
        return self.out_dir / f"{self.name}_{camera}"

    def _open(self, frame_set: FrameSet) -> None:
        from mmface4d_stream.formats.color_mp4 import ColorMp4Writer
        from mmface4d_stream.formats.depth_nut import DepthNutWriter

        for k, camera in enumerate(frame_set.cameras):
            if camera is None:
                raise InputError(f"camera {k} has no image in the first frame set; cannot size its files")
            height, width = camera.rgb.shape[:2]
            # Fragments of half a second: a killed capture keeps all but the last fragment's frames.
            self._color.append(ColorMp4Writer(f"{self.prefix(k)}.mp4", width, height, fps=self.fps,
                                              keep_on_write_error=True, fragment_s=RECORDING_FRAGMENT_S))
            self._depth.append(DepthNutWriter(f"{self.prefix(k)}.nut", width, height, fps=self.fps,
                                              keep_on_write_error=True))

    def write(self, frame_set: FrameSet) -> None:
        """Append one frame set; a camera missing from it repeats its previous images (kept in step)."""
        if not self._color:
            self._open(frame_set)
            self._previous = [None] * len(frame_set.cameras)
        for k, camera in enumerate(frame_set.cameras):
            camera = camera or self._previous[k]
            self._previous[k] = camera
            self._color[k].write(camera.rgb)
            depth = self._registrations.full(camera)
            depth = depth if depth is not None else np.zeros(camera.rgb.shape[:2], np.uint16)
            self._depth[k].write(depth)
        t_us = frame_set.t_capture_ns // 1000
        if self._first_us is None:
            self.first_host_ns = frame_set.t_source_ns or None
        self._first_us = t_us if self._first_us is None else self._first_us
        self._last_us = t_us
        self.frames += 1

    def close(self, success: bool = True) -> list[Path]:
        """Finalize the files (also after an error: what was written stays decodable); returns the json paths."""
        from mmface4d_stream.fit.camera_terms import FitCamera
        from mmface4d_stream.formats.intrinsics import IntrinsicsJson

        for writer in self._color + self._depth:
            writer.close(success=True)
        written = []
        if self._color:
            length = 0 if self._first_us is None else self._last_us - self._first_us + 1_000_000 // self.fps
            for k, (serial, intrinsics) in enumerate(zip(self.serials, self.intrinsics)):
                cam = FitCamera.of(intrinsics)
                path = Path(f"{self.prefix(k)}.json")
                IntrinsicsJson(float(cam.fx), float(cam.fy), float(cam.cx), float(cam.cy), int(cam.width),
                               int(cam.height), color_mode=self.color_mode, depth_mode=self.depth_mode,
                               serial_number=serial, stream_length_usec=int(length)).save(path)
                written.append(path)
        self._color, self._depth = [], []
        return written
