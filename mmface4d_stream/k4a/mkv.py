"""Azure Kinect MKV recordings, read and written with PyAV (no Kinect SDK).

Layout of a recording (Azure Kinect "recording file format"): video tracks titled COLOR (MJPG,
BGRA, NV12 or YUY2 through `V_MS/VFW/FOURCC`), DEPTH and IR (`b16g`: 16-bit big-endian gray,
millimetres for depth), a subtitle track IMU, the attachment `calibration.json`, and tags:
K4A_COLOR_MODE / K4A_DEPTH_MODE / K4A_IR_MODE on their tracks, K4A_START_OFFSET_NS,
K4A_DEVICE_SERIAL_NUMBER, K4A_WIRED_SYNC_MODE, K4A_DEPTH_DELAY_NS (and K4A_SUBORDINATE_DELAY_NS
for subordinates) on the file. Timestamps are stored in microseconds (TimestampScale 1000 ns).

Device timestamps, as the Sensor SDK's playback defines them: the recorder subtracts the device
timestamp of the first sample it wrote (K4A_START_OFFSET_NS) from every block timestamp, so

    device_timestamp_usec = block_timestamp_usec + K4A_START_OFFSET_NS // 1000.

The SDK groups blocks of the COLOR/DEPTH/IR tracks into one capture when their *sync*
timestamps (the block timestamp plus the track's share of K4A_DEPTH_DELAY_NS: a positive delay
is added to COLOR, a negative one to DEPTH and IR) lie within half a frame period of the
earliest; `MkvReader` does the same, so a dropped image gives a capture without it.

`MkvWriter` lets FFmpeg mux the file and then patches, in place and with equal lengths, what
FFmpeg cannot write: the microsecond TimestampScale (FFmpeg always writes milliseconds; the
writer hands it microsecond values as if they were milliseconds, then rescales the file by
rewriting the one TimestampScale field, which scales cluster, block, cue and duration values
at once), the `b16g`/`MJPG` BITMAPINFOHEADERs with positive heights, and FFmpeg's own
DURATION/ENCODER tags (voided).

Where the code lives: this module holds the format (track names, modes, codecs, the capture and
IMU records); `k4a.mkv_reader` reads, `k4a.mkv_writer` writes, `k4a.mkv_patch` rewrites FFmpeg's
output into the Kinect layout and `k4a.mkv_describe` summarizes a recording.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from mmface4d_stream.k4a.modes import ColorResolution


COLOR_FORMATS = ("MJPG", "BGRA", "NV12", "YUY2")
IR_MODES = ("ACTIVE", "PASSIVE")
WIRED_SYNC_MODES = ("STANDALONE", "MASTER", "SUBORDINATE")
CAMERA_FPS = (5, 15, 30)
TRACK_NAMES = ("COLOR", "DEPTH", "IR")
CALIBRATION_FILENAME = "calibration.json"

# BITMAPINFOHEADER (40 bytes, little-endian): size, width, height, planes, bit count,
# compression FourCC, image size, x/y pixels per metre, colours used, colours important.
_BMP_HEADER = struct.Struct("<IiiHHIIiiII")
_FOURCC_BITS = {"MJPG": 24, "BGRA": 32, "NV12": 12, "YUY2": 16, "b16g": 16}


def _fourcc(code: str) -> int:
    return struct.unpack("<I", code.encode("ascii"))[0]


@dataclass(frozen=True)
class ColorMode:
    """A color track's pixel format and resolution, e.g. MJPG_1080P (tag K4A_COLOR_MODE)."""

    format: str
    resolution: ColorResolution

    @classmethod
    def parse(cls, text: str) -> ColorMode:
        """'MJPG_1080P' -> ColorMode('MJPG', RES_1080P); ValueError for anything else."""
        fmt, _, res = text.strip().upper().partition("_")
        if fmt not in COLOR_FORMATS or not res:
            raise ValueError(
                f"unknown color mode {text!r}; expected FORMAT_RESOLUTION with a format among "
                f"{', '.join(COLOR_FORMATS)} (e.g. 'MJPG_1080P')."
            )
        return cls(fmt, ColorResolution.parse(res))

    @property
    def name(self) -> str:
        return f"{self.format}_{self.resolution.value}"

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.resolution.size

    def __str__(self) -> str:
        return self.name


@dataclass
class K4aCapture:
    """The images of one Kinect capture; an image is None when its track is absent or dropped.

    color: (H, W, 3) uint8 RGB. depth: (H, W) uint16 millimetres (0 = invalid).
    ir: (H, W) uint16 raw infrared intensity. Timestamps are device timestamps in µs.
    color_jpeg: the MJPEG colour frame as recorded, when the reader defers its decoding
    (`MkvReader.defer_mjpeg`; `color` is None then).
    """

    color: np.ndarray | None = None
    depth: np.ndarray | None = None
    ir: np.ndarray | None = None
    color_timestamp_usec: int | None = None
    depth_timestamp_usec: int | None = None
    ir_timestamp_usec: int | None = None
    index: int = 0
    color_jpeg: bytes | None = None

    @property
    def timestamp_usec(self) -> int:
        """The capture's device timestamp (µs): depth's, else IR's, else color's."""
        for ts in (self.depth_timestamp_usec, self.ir_timestamp_usec, self.color_timestamp_usec):
            if ts is not None:
                return ts
        raise ValueError("capture holds no image")


class ImuSample(NamedTuple):
    """One IMU sample: device timestamps (µs), accelerometer (3,) m/s², gyroscope (3,) rad/s."""

    acc_timestamp_usec: int
    acc: np.ndarray
    gyro_timestamp_usec: int
    gyro: np.ndarray


# The SDK's on-disk IMU sample: acc timestamp ns, acc xyz, gyro timestamp ns, gyro xyz (packed).
_IMU_SAMPLE = struct.Struct("<Q3fQ3f")
