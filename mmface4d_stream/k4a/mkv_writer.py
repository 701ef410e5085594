"""Writing Azure Kinect-style MKV recordings with PyAV (the layout: `k4a.mkv`; FFmpeg's output is
rewritten in place by `k4a.mkv_patch`)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from mmface4d_stream.k4a.modes import DepthMode
from mmface4d_stream.k4a.mkv import (
    CALIBRATION_FILENAME,
    CAMERA_FPS,
    WIRED_SYNC_MODES,
    ColorMode,
)
from mmface4d_stream.k4a.mkv_patch import patch_kinect_layout

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
@dataclass
class _WriterTrack:
    name: str
    stream: Any
    fourcc: str
    width: int
    height: int
    uid: int


def _new_track_uid(taken: set[int]) -> int:
    """A random non-zero 60-bit Matroska TrackUID, like the SDK's recorder draws."""
    while True:
        uid = int.from_bytes(os.urandom(8), "big") >> 4
        if uid and uid not in taken:
            return uid


class MkvWriter:
    """Write an Azure Kinect-style MKV: COLOR (MJPG), DEPTH and IR (b16g) tracks, K4A tags,
    the calibration.json attachment, microsecond device timestamps.

    `color_mode` e.g. 'MJPG_1080P' (None: no color track); `depth_mode` e.g. 'NFOV_UNBINNED'
    (None: no depth/IR); `ir` adds the IR track when depth is on. `calibration_raw` is the
    device's calibration.json bytes. `start_offset_usec` defaults to the first timestamp
    written (as the SDK's recorder does). With `atomic=True` the file is written under a
    temporary name beside `path` and renamed when `close()` succeeds.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        calibration_raw: bytes,
        color_mode: str | ColorMode | None = "MJPG_1080P",
        depth_mode: str | DepthMode | None = "NFOV_UNBINNED",
        ir: bool = True,
        fps: int = 30,
        serial_number: str = "",
        wired_sync_mode: str = "STANDALONE",
        depth_delay_usec: int = 0,
        subordinate_delay_usec: int = 0,
        start_offset_usec: int | None = None,
        jpeg_qscale: int = 3,
        atomic: bool = False,
    ):
        self.path = Path(path)
        if fps not in CAMERA_FPS:
            raise ValueError(f"fps must be one of {CAMERA_FPS}, got {fps}.")
        if wired_sync_mode.upper() not in WIRED_SYNC_MODES:
            raise ValueError(f"wired_sync_mode must be one of {WIRED_SYNC_MODES}, got {wired_sync_mode!r}.")
        if not calibration_raw:
            raise ValueError("calibration_raw (the device's calibration.json bytes) is required.")
        self.color_mode = ColorMode.parse(color_mode) if isinstance(color_mode, str) else color_mode
        if self.color_mode is not None and self.color_mode.format != "MJPG":
            raise ValueError(f"MkvWriter writes MJPG color only, got {self.color_mode}.")
        self.depth_mode = DepthMode.parse(depth_mode) if depth_mode is not None else None
        if self.color_mode is None and self.depth_mode is None:
            raise ValueError("a recording needs a color or a depth track.")
        self.fps = fps
        self.start_offset_usec = start_offset_usec
        self._tmp_path = self.path.with_name(f".{self.path.name}.partial") if atomic else self.path
        self._container = av.open(
            str(self._tmp_path), "w", format="matroska",
            options={"allow_raw_vfw": "1", "write_crc32": "0"},
        )
        c = self._container
        c.metadata["title"] = "Azure Kinect"
        c.metadata["K4A_DEPTH_DELAY_NS"] = str(int(depth_delay_usec) * 1000)
        c.metadata["K4A_WIRED_SYNC_MODE"] = wired_sync_mode.upper()
        if wired_sync_mode.upper() == "SUBORDINATE":
            c.metadata["K4A_SUBORDINATE_DELAY_NS"] = str(int(subordinate_delay_usec) * 1000)
        if serial_number:
            c.metadata["K4A_DEVICE_SERIAL_NUMBER"] = serial_number
        self._tracks: dict[str, _WriterTrack] = {}
        if self.color_mode is not None:
            w, h = self.color_mode.size
            self._add_track("COLOR", "MJPG", w, h, "yuvj422p",
                            {"K4A_COLOR_MODE": self.color_mode.name})
            self._jpeg = av.CodecContext.create("mjpeg", "w")
            self._jpeg.width, self._jpeg.height = w, h
            self._jpeg.pix_fmt = "yuvj422p"
            self._jpeg.time_base = Fraction(1, fps)
            self._jpeg.options = {"qmin": str(jpeg_qscale), "qmax": str(jpeg_qscale)}
        if self.depth_mode is not None:
            w, h = self.depth_mode.size
            if self.depth_mode != DepthMode.PASSIVE_IR:
                self._add_track("DEPTH", "b16g", w, h, "gray16be", {"K4A_DEPTH_MODE": self.depth_mode.value})
            else:
                c.metadata["K4A_DEPTH_MODE"] = self.depth_mode.value
            if ir or self.depth_mode == DepthMode.PASSIVE_IR:
                self._add_track("IR", "b16g", w, h, "gray16be", {
                    "K4A_IR_MODE": "PASSIVE" if self.depth_mode == DepthMode.PASSIVE_IR else "ACTIVE",
                })
        attachment = c.add_attachment(CALIBRATION_FILENAME, "application/octet-stream", bytes(calibration_raw))
        attachment.metadata["K4A_CALIBRATION_FILE"] = CALIBRATION_FILENAME
        self._started = False
        self._closed = False
        self._last_ts: dict[str, int] = {}
        self.frames_written = 0

    def _add_track(self, name: str, fourcc: str, width: int, height: int, pix_fmt: str, tags: dict) -> None:
        # Raw video through VFW, so FFmpeg writes V_MS/VFW/FOURCC as Kinect recordings do
        # (an mjpeg stream would become V_MJPEG); the header is fixed up after muxing.
        stream = self._container.add_stream("rawvideo", rate=self.fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.codec_tag = fourcc
        stream.metadata["title"] = name
        # The SDK tags each track with its TrackUID (K4A_COLOR_TRACK = "<uid>"). FFmpeg picks
        # its own UIDs, so we choose one here and patch FFmpeg's into it after muxing.
        uid = _new_track_uid(set(t.uid for t in self._tracks.values()))
        stream.metadata[f"K4A_{name}_TRACK"] = str(uid)
        for key, value in tags.items():
            stream.metadata[key] = value
        self._tracks[name] = _WriterTrack(name, stream, fourcc, width, height, uid)

    @property
    def tracks(self) -> tuple[str, ...]:
        return tuple(self._tracks)

    def write(
        self,
        timestamp_usec: int,
        *,
        color: np.ndarray | None = None,
        depth: np.ndarray | None = None,
        ir: np.ndarray | None = None,
        color_timestamp_usec: int | None = None,
    ) -> None:
        """Write one capture. Images: color (H, W, 3) uint8 RGB, depth (H, W) uint16 mm,
        ir (H, W) uint16; any may be None (a dropped image). `timestamp_usec` is the depth/IR
        device timestamp; color gets `color_timestamp_usec` (default: timestamp - depth delay, the
        delay being the depth capture time minus the color capture time)."""
        if self._closed:
            raise ValueError("MkvWriter is closed.")
        images = {"COLOR": color, "DEPTH": depth, "IR": ir}
        for name, image in images.items():
            if image is not None and name not in self._tracks:
                raise ValueError(f"this recording has no {name} track.")
        if all(image is None for image in images.values()):
            raise ValueError("a capture needs at least one image.")
        delay = int(self._container.metadata["K4A_DEPTH_DELAY_NS"]) // 1000
        stamps = {
            # K4A_DEPTH_DELAY_NS is depth capture time minus color capture time.
            "COLOR": int(color_timestamp_usec) if color_timestamp_usec is not None else int(timestamp_usec) - delay,
            "DEPTH": int(timestamp_usec),
            "IR": int(timestamp_usec),
        }
        if not self._started:
            if self.start_offset_usec is None:
                self.start_offset_usec = min(stamps[n] for n, im in images.items() if im is not None)
            self._container.metadata["K4A_START_OFFSET_NS"] = str(int(self.start_offset_usec) * 1000)
            self._started = True
        for name, image in images.items():
            if image is None:
                continue
            track = self._tracks[name]
            ts = stamps[name] - self.start_offset_usec
            if ts < 0:
                raise ValueError(f"{name} timestamp {stamps[name]} µs is before the start offset "
                                 f"{self.start_offset_usec} µs.")
            if name in self._last_ts and ts <= self._last_ts[name]:
                raise ValueError(f"{name} timestamps must increase ({stamps[name]} µs after "
                                 f"{self._last_ts[name] + self.start_offset_usec} µs).")
            self._last_ts[name] = ts
            if name == "COLOR":
                payload = self._encode_jpeg(image, track)
            else:
                image = np.asarray(image)
                if image.shape != (track.height, track.width) or image.dtype != np.uint16:
                    raise ValueError(f"{name} image must be uint16 ({track.height}, {track.width}), "
                                     f"got {image.dtype} {image.shape}.")
                payload = image.astype(">u2").tobytes()
            packet = av.Packet(payload)
            packet.stream = track.stream
            # FFmpeg's Matroska muxer counts in ms; handing it µs values keeps them exact, and
            # close() rescales the file to µs by patching TimestampScale.
            packet.time_base = Fraction(1, 1000)
            packet.pts = packet.dts = ts
            packet.duration = 1_000_000 // self.fps
            packet.is_keyframe = True
            self._container.mux(packet)
        self.frames_written += 1

    def _encode_jpeg(self, image: np.ndarray, track: _WriterTrack) -> bytes:
        image = np.ascontiguousarray(image)
        if image.shape != (track.height, track.width, 3) or image.dtype != np.uint8:
            raise ValueError(f"color image must be uint8 ({track.height}, {track.width}, 3) RGB, "
                             f"got {image.dtype} {image.shape}.")
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuvj422p")
        packets = self._jpeg.encode(frame)
        if len(packets) != 1:
            raise RuntimeError(f"MJPEG encoder returned {len(packets)} packets for one frame")
        return bytes(packets[0])

    def close(self) -> None:
        """Finish the file (trailer, header fix-ups) and, when atomic, move it into place."""
        if self._closed:
            return
        self._closed = True
        if not self._started:
            # An empty recording still needs its start offset tag for readers.
            self._container.metadata["K4A_START_OFFSET_NS"] = str(int(self.start_offset_usec or 0) * 1000)
        self._container.close()
        patch_kinect_layout(self._tmp_path, {t.name: t for t in self._tracks.values()})
        if self._tmp_path != self.path:
            os.replace(self._tmp_path, self.path)

    def abort(self) -> None:
        """Stop without finishing: the partial file is removed (atomic) or left as written."""
        if self._closed:
            return
        self._closed = True
        try:
            self._container.close()
        finally:
            if self._tmp_path != self.path:
                self._tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> MkvWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
