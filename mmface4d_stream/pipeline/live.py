"""Live capture: Kinects through pyk4a, device-rate replay, the newest-frame policy, dataset recording.

- `KinectSource`: 1–3 Azure Kinects through pyk4a (optional extra `live`), wired sync master and
  subordinates, devices chosen by serial number, depth registered to color by the SDK.
- `LatestFrameSource`: a thread pulls frame sets from any source (paced at device rate for
  recordings) and keeps only the newest: a consumer that falls behind gets fresh frames and the
  skipped ones are counted, so latency stays bounded (the live policy).
- `DatasetRecorder`: writes what the cameras saw as a dataset sequence (mp4, depth nut, json per
  camera); the microphone's wav, aligned to its first frame, is `pipeline.audio_recorder`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from mmface4d_stream.errors import InputError
from mmface4d_stream.pipeline.sources import DepthRegistrations
from mmface4d_stream.types import CameraFrame, FrameSet

log = logging.getLogger(__name__)

LIVE_EXTRA_HINT = "pip install 'mmface4d-stream[live]'"
# Colour files of a recording are fragmented mp4s, a fragment every this many seconds.
RECORDING_FRAGMENT_S = 0.5


def import_pyk4a():
    """pyk4a, or an InputError saying how to get it (it also needs Microsoft's Azure Kinect SDK)."""
    try:
        import pyk4a
    except ImportError as exc:
        raise InputError(f"live Kinect capture needs pyk4a ({LIVE_EXTRA_HINT}; it also needs the Azure Kinect "
                         f"Sensor SDK, libk4a): {exc}") from None
    return pyk4a


def import_sounddevice():
    """sounddevice, or an InputError saying how to get it (and PortAudio, Debian libportaudio2)."""
    try:
        import sounddevice
    except (ImportError, OSError) as exc:
        raise InputError(f"audio capture needs sounddevice ({LIVE_EXTRA_HINT}) and PortAudio "
                         f"(Debian: libportaudio2): {exc}") from None
    return sounddevice


class KinectSource:
    """Frame sets from 1–3 connected Azure Kinects (pyk4a), synchronized by device timestamp.

    serials: the devices to use, in camera order (None: every connected device, in device-id
    order). With several devices the first is the wired-sync master and the others subordinates,
    each `subordinate_delay_usec` later than the previous (the SDK's advice: 160 µs apart so the
    depth lasers do not interfere); subordinates start first, as the SDK requires. Depth comes
    registered to color (`capture.transformed_depth`); color arrives BGRA and leaves RGB.
    A frame set is complete when the aligned color timestamps lie within half a frame period.
    """

    def __init__(self, serials: Sequence[str] | None = None, name: str = "live", color_resolution: str = "1080P",
                 depth_mode: str = "NFOV_UNBINNED", fps: int = 30, subordinate_delay_usec: int = 160,
                 max_frames: int | None = None, timeout_ms: int = 2000):
        from mmface4d_stream.k4a.calibration import K4aCalibration
        from mmface4d_stream.k4a.modes import ColorResolution, DepthMode

        pyk4a = import_pyk4a()
        self.name = name
        self.max_frames = max_frames
        self.timeout_ms = int(timeout_ms)
        self.period_usec = 1_000_000 // int(fps)
        fps_enum = {5: pyk4a.FPS.FPS_5, 15: pyk4a.FPS.FPS_15, 30: pyk4a.FPS.FPS_30}.get(int(fps))
        if fps_enum is None:
            raise InputError(f"Kinect frame rate must be 5, 15 or 30, got {fps}")
        resolution = ColorResolution.parse(color_resolution)
        depth = DepthMode.parse(depth_mode)
        ids_by_serial = self._serials_by_device_id(pyk4a)
        if not ids_by_serial:
            raise InputError("no Azure Kinect is connected")
        wanted = list(serials) if serials else list(ids_by_serial)
        missing = [s for s in wanted if s not in ids_by_serial]
        if missing:
            raise InputError(f"no connected Kinect with serial {', '.join(missing)} "
                             f"(connected: {', '.join(ids_by_serial)})")
        self.serials = wanted
        self.camera_indices = list(range(len(wanted)))
        self.delays_usec = [0] + [subordinate_delay_usec * k for k in range(1, len(wanted))]
        self.devices = []
        for k, serial in enumerate(wanted):
            if len(wanted) == 1:
                mode = pyk4a.WiredSyncMode.STANDALONE
            else:
                mode = pyk4a.WiredSyncMode.MASTER if k == 0 else pyk4a.WiredSyncMode.SUBORDINATE
            config = pyk4a.Config(
                color_resolution=pyk4a.ColorResolution(resolution.k4a_id),
                color_format=pyk4a.ImageFormat.COLOR_BGRA32,
                depth_mode=pyk4a.DepthMode(depth.k4a_id),
                camera_fps=fps_enum,
                synchronized_images_only=True,
                wired_sync_mode=mode,
                subordinate_delay_off_master_usec=self.delays_usec[k],
            )
            self.devices.append(pyk4a.PyK4A(config=config, device_id=ids_by_serial[serial]))
        self.calibrations = []
        started = []
        try:
            # Subordinates wait for the master's sync pulses: they must be running before it starts.
            for k in list(range(1, len(self.devices))) + [0]:
                self.devices[k].start()
                started.append(k)
            for device in self.devices:
                self.calibrations.append(K4aCalibration.from_raw_json(device.calibration_raw, resolution, depth))
        except Exception:
            for k in started:
                self.devices[k].stop()
            raise
        self._frame = 0

    @staticmethod
    def _serials_by_device_id(pyk4a) -> dict[str, int]:
        serials: dict[str, int] = {}
        for device_id in range(pyk4a.connected_device_count()):
            device = pyk4a.PyK4A(device_id=device_id)
            device.open()
            try:
                serials[str(device.serial)] = device_id
            finally:
                device.close()
        return serials

    @property
    def intrinsics(self) -> list:
        return [c.color for c in self.calibrations]

    def __len__(self) -> int:
        return self.max_frames or 0

    def _capture(self, k: int):
        capture = self.devices[k].get_capture(timeout=self.timeout_ms)
        return capture, int(capture.color_timestamp_usec) - self.delays_usec[k]

    def __iter__(self) -> Iterator[FrameSet]:
        """Frame sets as the devices deliver them (re-entrant: a later iteration continues the stream)."""
        while self.max_frames is None or self._frame < self.max_frames:
            captures = [self._capture(k) for k in range(len(self.devices))]
            # Re-read the cameras that lag until every aligned timestamp is within half a period.
            for _ in range(4 * len(self.devices)):
                newest = max(t for _, t in captures)
                late = [k for k, (_, t) in enumerate(captures) if newest - t > self.period_usec // 2]
                if not late:
                    break
                for k in late:
                    captures[k] = self._capture(k)
            cameras = []
            for k, (capture, t_usec) in enumerate(captures):
                rgb = np.ascontiguousarray(capture.color[:, :, 2::-1])
                depth = capture.transformed_depth
                cameras.append(CameraFrame(k, self.serials[k], rgb, None if depth is None else np.asarray(depth),
                                           self.calibrations[k].color, t_usec))
            # The host's monotonic time of the capture (the SDK's system timestamp, when pyk4a
            # exposes it): the clock the microphone's recording is aligned to.
            host_ns = [getattr(c, "color_system_timestamp_nsec", 0) for c, _ in captures]
            yield FrameSet(self.name, self._frame, min(t for _, t in captures) * 1000, cameras,
                           t_source_ns=min(host_ns) if all(host_ns) else time.monotonic_ns())
            self._frame += 1

    def close(self) -> None:
        for k in [0] + list(range(1, len(self.devices))):
            try:
                self.devices[k].stop()
            except Exception as exc:  # stop the others whatever one says
                log.warning("stopping Kinect %s: %s", self.serials[k], exc)
        self.devices = []


class LatestFrameSource:
    """The live policy over any frame-set iterable: a thread reads ahead, only the newest frame is kept.

    pace: sleep so frame sets leave at the rate their capture times say (replaying recordings as a
    camera would deliver them); off for real devices, which block until the next capture.
    `next()` returns the newest frame set not yet taken (waiting for one), None once the source is
    exhausted. Frames replaced before anyone took them are counted in `dropped`. `on_frame` sees
    every frame set in the reading thread (the recorder writes all of them, dropped or not).
    """

    def __init__(self, frames, pace: bool = True, on_frame: Callable[[FrameSet], None] | None = None):
        self._frames = frames
        self.pace = pace
        self.on_frame = on_frame
        self.dropped = 0
        self.read = 0
        self.error: BaseException | None = None
        self._latest: FrameSet | None = None
        self._finished = False
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="latest-frame-source", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        start_host = start_capture = None
        try:
            for frame_set in self._frames:
                if self._stop.is_set():
                    break
                if self.pace:
                    if start_host is None:
                        start_host, start_capture = time.monotonic_ns(), frame_set.t_capture_ns
                    wait_ns = (frame_set.t_capture_ns - start_capture) - (time.monotonic_ns() - start_host)
                    if wait_ns > 0 and self._stop.wait(wait_ns / 1e9):
                        break
                if self.pace or not frame_set.t_source_ns:
                    # A device source stamps its host capture time itself (the audio's reference).
                    frame_set.t_source_ns = time.monotonic_ns()
                if self.on_frame is not None:
                    self.on_frame(frame_set)
                with self._cond:
                    if self._latest is not None:
                        self.dropped += 1
                    self._latest = frame_set
                    self.read += 1
                    self._cond.notify_all()
        except BaseException as exc:  # handed to the consumer: a source failure must not look like an end
            self.error = exc
        finally:
            with self._cond:
                self._finished = True
                self._cond.notify_all()

    def next(self, timeout_s: float | None = None) -> FrameSet | None:
        """The newest frame set (waiting up to `timeout_s`; None: forever); None when the source ended."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while self._latest is None and not self._finished:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"no frame within {timeout_s} s")
                self._cond.wait(remaining)
            frame_set, self._latest = self._latest, None
        if frame_set is None and self.error is not None:
            raise self.error
        return frame_set

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)


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
