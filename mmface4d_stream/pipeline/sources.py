"""Frame sources: dataset-format sequences and Azure Kinect MKV sessions, one `FrameSet` at a time.

`DepthRegistrations` registers the raw depth that MKV frames carry (see `types.CameraFrame`).
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from mmface4d_stream.errors import InputError
from mmface4d_stream.formats.color_mp4 import ColorMp4Reader
from mmface4d_stream.formats.depth_nut import DepthNutReader
from mmface4d_stream.formats.sequence import DATASET_FPS, DatasetSequence, mkv_session_name
from mmface4d_stream.frame_records import CameraFrame, FrameSet


class DatasetSource:
    """Replay a dataset-format sequence (`NAME_i.mp4` + `NAME_i.nut` + `NAME_i.json`) frame by frame.

    cameras: which camera indices to read (default: all present). `t_capture_ns` is frame / 30 s.
    Streams of different lengths are an error unless `truncate=True` (then the shortest wins).
    """

    def __init__(self, path: str | os.PathLike, cameras: Sequence[int] | None = None, truncate: bool = False,
                 max_frames: int | None = None):
        self.sequence = DatasetSequence(path)
        self.name = self.sequence.name
        present = self.sequence.camera_indices
        self.camera_indices = list(present if cameras is None else cameras)
        for index in self.camera_indices:
            cam = self.sequence.camera(index)
            missing = [s for s, p in (("mp4", cam.color_path), ("nut", cam.depth_path), ("json", cam.intrinsics_path))
                       if p is None]
            if missing:
                raise InputError(f"camera {index} lacks {', '.join(self.name + f'_{index}.' + s for s in missing)}",
                                 self.sequence.directory / self.name)
        counts = {f"{self.name}_{i} {k}": n for i in self.camera_indices
                  for k, n in self.sequence.camera(i).frame_counts().items() if k in ("color", "depth")}
        if len(set(counts.values())) > 1 and not truncate:
            detail = ", ".join(f"{k}: {n}" for k, n in counts.items())
            raise InputError(f"cameras have different frame counts ({detail})", self.sequence.directory / self.name)
        self.n_frames = min(counts.values())
        self.input_frames = self.n_frames  # the whole input, before --max-frames
        if max_frames is not None:
            self.n_frames = min(self.n_frames, int(max_frames))

    @property
    def serials(self) -> list[str]:
        return [self.sequence.camera(i).intrinsics.serial_number or str(i) for i in self.camera_indices]

    @property
    def intrinsics(self) -> list:
        return [self.sequence.camera(i).intrinsics for i in self.camera_indices]

    def __len__(self) -> int:
        return self.n_frames

    def __iter__(self) -> Iterator[FrameSet]:
        return self.frames()

    def frames(self, defer_color: bool = False) -> Iterator[FrameSet]:
        """The frame sets from the start (the colour is H.264, decoded here: `defer_color`, which
        only MJPEG recordings honour, changes nothing)."""
        with ExitStack() as stack:
            colors = [iter(stack.enter_context(ColorMp4Reader(self.sequence.camera(i).color_path)))
                      for i in self.camera_indices]
            depths = [iter(stack.enter_context(DepthNutReader(self.sequence.camera(i).depth_path)))
                      for i in self.camera_indices]
            for frame in range(self.n_frames):
                cameras = []
                for k, index in enumerate(self.camera_indices):
                    rgb, depth = next(colors[k]), next(depths[k])
                    cameras.append(CameraFrame(index, self.serials[k], rgb, depth, self.intrinsics[k]))
                yield FrameSet(self.name, frame, frame * 1_000_000_000 // DATASET_FPS, cameras,
                               t_source_ns=time.monotonic_ns())


class DepthRegistrations:
    """Registers `CameraFrame.depth_raw` to the frame's color image: one
    `k4a.registration.DepthToColorRegistration` per camera serial, built on first use from the
    frame's calibration (again if that changes). Frames that come registered (`depth_mm`) pass
    through. Thread-safe as the registrations are, except the first use of a new camera."""

    def __init__(self):
        self._by_serial: dict = {}

    def registration(self, camera: CameraFrame):
        """The `DepthToColorRegistration` of the camera's calibration."""
        reg = self._by_serial.get(camera.serial)
        if reg is None or not (reg.calibration is camera.calibration or reg.calibration == camera.calibration):
            if camera.calibration is None:
                raise ValueError(f"camera {camera.camera} ({camera.serial}) has raw depth but no calibration "
                                 "to register it")
            reg = self._by_serial[camera.serial] = camera.calibration.registration
        return reg

    def full(self, camera: CameraFrame) -> np.ndarray | None:
        """The camera's depth registered to the whole color image, (H, W) uint16 mm, or None (no depth)."""
        if camera.depth_mm is not None or camera.depth_raw is None:
            return camera.depth_mm
        return np.asarray(self.registration(camera).depth_to_color(camera.depth_raw))

    def crop(self, camera: CameraFrame, box: tuple[int, int, int, int]) -> np.ndarray | None:
        """The registered depth inside color box (x0, y0, x1, y1), as `full(camera)[y0:y1, x0:x1]`
        (a new array; empty where the box is) but registering only that box; None: no depth."""
        x0, y0, x1, y1 = box
        if camera.depth_mm is not None:
            return np.ascontiguousarray(camera.depth_mm[y0:y1, x0:x1])
        if camera.depth_raw is None:
            return None
        height, width = camera.rgb.shape[:2]
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
        if x1 <= x0 or y1 <= y0:
            return np.zeros((max(0, y1 - y0), max(0, x1 - x0)), np.uint16)
        return self.registration(camera).depth_to_color(camera.depth_raw, roi=(x0, y0, x1, y1))


def with_rgb(camera: CameraFrame) -> CameraFrame:
    """`camera` with its colour decoded: itself when `rgb` is there, else a copy whose `rgb` is its
    `color_jpeg` decoded (`k4a.mkv_reader.decode_mjpeg`; InputError naming the camera when it
    does not decode)."""
    if camera.rgb is not None or camera.color_jpeg is None:
        return camera
    from mmface4d_stream.k4a.mkv_reader import decode_mjpeg

    rgb = decode_mjpeg(camera.color_jpeg, path=f"camera {camera.serial}")
    return replace(camera, rgb=rgb, color_jpeg=None)


class MkvSource:
    """Replay the MKVs of one Kinect session, synchronized by device timestamp.

    Frame sets where a camera dropped its capture carry None for it (counted in `dropped`).
    Intrinsics are the color cameras' full Kinect lens models from each recording's calibration.
    Depth is not registered here: cameras carry `depth_raw` and `calibration` (the landmark stage
    registers only the face's box; `DepthRegistrations` registers what else needs it).
    """

    def __init__(self, paths: Sequence[str | os.PathLike], name: str | None = None, max_frames: int | None = None):
        from mmface4d_stream.k4a.sync import SessionSync

        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise InputError("no MKV recordings given")
        self.name = name or mkv_session_name(self.paths[0])
        self.max_frames = max_frames
        # Probe once for serials, calibrations and the frame-set count; iteration reopens.
        with SessionSync(self.paths, tracks=("COLOR", "DEPTH")) as sync:
            self.serials = [r.serial_number or str(i) for i, r in enumerate(sync.readers)]
            self.calibrations = [r.calibration for r in sync.readers]
            self.n_frames = int(sync.frame_count_estimate)
        # The whole input's length (for "finished" in the meta json): the count is an estimate from
        # timestamps, so it is given only when --max-frames cuts the run short of it; a run to the
        # recording's end covers the input whatever the estimate said.
        self.input_frames = self.n_frames if max_frames is not None and int(max_frames) < self.n_frames else None
        if max_frames is not None:
            self.n_frames = min(self.n_frames, int(max_frames))
        self.camera_indices = list(range(len(self.paths)))
        self.dropped = 0

    @property
    def intrinsics(self) -> list:
        return [c.color for c in self.calibrations]

    def __len__(self) -> int:
        return self.n_frames

    def __iter__(self) -> Iterator[FrameSet]:
        return self.frames()

    def frames(self, defer_color: bool = False) -> Iterator[FrameSet]:
        """The frame sets from the start; `defer_color`: MJPEG colour stays undecoded
        (`CameraFrame.color_jpeg`, rgb None) until `with_rgb` decodes it where it is used."""
        from mmface4d_stream.k4a.sync import SessionSync

        with SessionSync(self.paths, tracks=("COLOR", "DEPTH")) as sync:
            for reader in sync.readers:
                reader.defer_mjpeg = defer_color
            start_usec = None
            for frame_set in sync:
                if self.max_frames is not None and frame_set.index >= self.max_frames:
                    break
                start_usec = frame_set.timestamp_usec if start_usec is None else start_usec
                cameras: list[CameraFrame | None] = []
                for k, capture in enumerate(frame_set.captures):
                    if capture is None or (capture.color is None and capture.color_jpeg is None):
                        cameras.append(None)
                        self.dropped += 1
                        continue
                    cameras.append(CameraFrame(k, self.serials[k], capture.color, None, self.calibrations[k].color,
                                               capture.timestamp_usec, depth_raw=capture.depth,
                                               calibration=self.calibrations[k], color_jpeg=capture.color_jpeg))
                yield FrameSet(self.name, frame_set.index, frame_set.timestamp_usec * 1000, cameras,
                               t_source_ns=time.monotonic_ns())


class LoopingSource:
    """Replay `inner` `loops` times back to back (long runs from a short capture: benchmarks, soak tests).

    Frame numbers and capture times keep counting across laps, so downstream stages see one long
    sequence; memory stays that of one pass (each lap re-reads the files).
    """

    def __init__(self, inner, loops: int):
        if loops < 1:
            raise ValueError(f"loops must be at least 1, got {loops}")
        self.inner = inner
        self.loops = int(loops)
        self.name = inner.name
        self.camera_indices = inner.camera_indices

    @property
    def serials(self) -> list[str]:
        return self.inner.serials

    @property
    def intrinsics(self) -> list:
        return self.inner.intrinsics

    def __len__(self) -> int:
        return len(self.inner) * self.loops

    def __iter__(self) -> Iterator[FrameSet]:
        return self.frames()

    def frames(self, defer_color: bool = False) -> Iterator[FrameSet]:
        """The laps' frame sets; `defer_color` as the inner source's `frames`."""
        frame_offset, time_offset_ns = 0, 0
        period_ns = 1_000_000_000 // DATASET_FPS
        for _ in range(self.loops):
            first_ns = last_ns = None
            last_frame = -1
            for frame_set in self.inner.frames(defer_color):
                first_ns = frame_set.t_capture_ns if first_ns is None else first_ns
                last_ns, last_frame = frame_set.t_capture_ns, frame_set.frame
                frame_set.frame += frame_offset
                frame_set.t_capture_ns += time_offset_ns
                yield frame_set
            if first_ns is None:
                return
            frame_offset += last_frame + 1
            time_offset_ns += last_ns - first_ns + period_ns


def skip_to(frame_sets, start_frame: int) -> Iterator[FrameSet]:
    """Frame sets of an iterable from frame number `start_frame` on (resuming a stream after a restart)."""
    for frame_set in frame_sets:
        if frame_set.frame >= start_frame:
            yield frame_set


def open_source(inputs: Sequence[str | os.PathLike], cameras: Sequence[int] | None = None,
                max_frames: int | None = None):
    """A `MkvSource` for .mkv paths, else a `DatasetSource` for one `<dir>/<name>`."""
    paths = [Path(p) for p in inputs]
    if paths and all(p.suffix.lower() == ".mkv" for p in paths):
        source = MkvSource(paths, max_frames=max_frames)
        if cameras is not None:
            raise InputError("--cameras selects dataset cameras; give the wanted MKVs instead")
        return source
    if len(paths) != 1:
        raise InputError("give one dataset sequence <dir>/<name> or a set of .mkv recordings")
    return DatasetSource(paths[0], cameras=cameras, max_frames=max_frames)
