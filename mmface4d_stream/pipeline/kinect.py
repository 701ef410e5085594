"""Live capture from 1–3 Azure Kinects through pyk4a (the optional extra `live`).

`KinectSource` opens the devices chosen by serial number, as wired sync master and subordinates,
and yields their frame sets with depth registered to color by the SDK.
"""

from __future__ import annotations

import logging
import time
from typing import Iterator, Sequence

import numpy as np

from mmface4d_stream.errors import InputError
from mmface4d_stream.frame_records import CameraFrame, FrameSet

log = logging.getLogger(__name__)

LIVE_EXTRA_HINT = "pip install 'mmface4d-stream[live]'"


def import_pyk4a():
    """pyk4a, or an InputError saying how to get it (it also needs Microsoft's Azure Kinect SDK)."""
    try:
        import pyk4a
    except ImportError as exc:
        raise InputError(f"live Kinect capture needs pyk4a ({LIVE_EXTRA_HINT}; it also needs the Azure Kinect "
                         f"Sensor SDK, libk4a): {exc}") from None
    return pyk4a


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
        return self.frames()

    def frames(self, defer_color: bool = False) -> Iterator[FrameSet]:
        """Frame sets as the devices deliver them (re-entrant: a later iteration continues the
        stream). The SDK delivers decoded BGRA colour: `defer_color` changes nothing."""
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
