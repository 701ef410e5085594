"""Azure Kinect capture modes: colour resolutions, depth modes and how each reads its sensor.

Each capture mode reads a binned and cropped window of the sensor (`MODE_TABLE`, from the Sensor
SDK's src/transformation/mode_specific_calibration.c); `raw_calibration.RawCamera.camera_model`
turns the normalized full-sensor intrinsics into the pixel intrinsics of a mode with it.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

import numpy as np

__all__ = ["ModeInfo", "ColorResolution", "DepthMode", "MODE_TABLE", "DEPTH_SENSOR_SIZE", "COLOR_SENSOR_SIZE",
           "LEGACY_COLOR_WINDOW"]


class ModeInfo(NamedTuple):
    """How a capture mode reads the sensor: scale to the binned size, then crop to the output.

    All values in pixels of the mode: `binned_*` is the full sensor after binning/scaling,
    `crop_*` the top-left corner of the output window in it, `width`/`height` the image size.
    """

    binned_width: int
    binned_height: int
    crop_x: int
    crop_y: int
    width: int
    height: int


class _SensorMode:
    """What color resolutions and depth modes share: their row of `MODE_TABLE` and the SDK's ids.

    The SDK numbers both enums from 1 in declaration order (0 is OFF), as pyk4a does.
    """

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        info = MODE_TABLE[self]
        return info.width, info.height

    @property
    def k4a_id(self) -> int:
        """The SDK's enum value (`k4a_color_resolution_t` / `k4a_depth_mode_t`, pyk4a's values)."""
        return list(type(self)).index(self) + 1

    @classmethod
    def from_k4a_id(cls, value: int):
        members = list(cls)
        if not 1 <= int(value) <= len(members):
            raise ValueError(f"k4a {cls.__name__} id must be 1..{len(members)} (0 is OFF), got {value}.")
        return members[int(value) - 1]


class ColorResolution(_SensorMode, Enum):
    """Azure Kinect color camera resolutions (4:3 sensor of 4096x3072 pixels)."""

    RES_720P = "720P"
    RES_1080P = "1080P"
    RES_1440P = "1440P"
    RES_1536P = "1536P"
    RES_2160P = "2160P"
    RES_3072P = "3072P"


    @classmethod
    def parse(cls, value: ColorResolution | str | int) -> ColorResolution:
        """Accept the enum, '1080P', 'RES_1080P', 'K4A_COLOR_RESOLUTION_1080P', the MKV tag
        K4A_COLOR_MODE form 'MJPG_1080P', or a height in pixels (1080)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            for member in cls:
                if member.size[1] == int(value):
                    return member
            raise ValueError(
                f"unknown Azure Kinect color resolution height {value}; expected one of "
                f"{', '.join(str(m.size[1]) for m in cls)}."
            )
        if isinstance(value, str):
            text = value.strip().upper()
            for member in cls:
                if text == member.value or text.endswith("_" + member.value):
                    return member
        raise ValueError(
            f"unknown Azure Kinect color resolution {value!r}; expected one of "
            f"{', '.join(m.value for m in cls)} (e.g. '1080P' or 'MJPG_1080P')."
        )


class DepthMode(_SensorMode, Enum):
    """Azure Kinect depth camera modes (1024x1024 sensor)."""

    NFOV_2X2BINNED = "NFOV_2X2BINNED"
    NFOV_UNBINNED = "NFOV_UNBINNED"
    WFOV_2X2BINNED = "WFOV_2X2BINNED"
    WFOV_UNBINNED = "WFOV_UNBINNED"
    PASSIVE_IR = "PASSIVE_IR"


    @classmethod
    def parse(cls, value: DepthMode | str) -> DepthMode:
        """Accept the enum, 'NFOV_UNBINNED' (the MKV tag K4A_DEPTH_MODE form) or
        'K4A_DEPTH_MODE_NFOV_UNBINNED', case-insensitive."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            text = value.strip().upper()
            if text.startswith("K4A_DEPTH_MODE_"):
                text = text[len("K4A_DEPTH_MODE_"):]
            for member in cls:
                if text == member.value:
                    return member
        raise ValueError(
            f"unknown Azure Kinect depth mode {value!r}; expected one of {', '.join(m.value for m in cls)}."
        )


# Binned size, crop offset and output size of every mode (Azure Kinect Sensor SDK,
# src/transformation/mode_specific_calibration.c). Color modes refer to the 4:3 sensor.
MODE_TABLE: dict[ColorResolution | DepthMode, ModeInfo] = {
    ColorResolution.RES_720P: ModeInfo(1280, 960, 0, 120, 1280, 720),
    ColorResolution.RES_1080P: ModeInfo(1920, 1440, 0, 180, 1920, 1080),
    ColorResolution.RES_1440P: ModeInfo(2560, 1920, 0, 240, 2560, 1440),
    ColorResolution.RES_1536P: ModeInfo(2048, 1536, 0, 0, 2048, 1536),
    ColorResolution.RES_2160P: ModeInfo(3840, 2880, 0, 360, 3840, 2160),
    ColorResolution.RES_3072P: ModeInfo(4096, 3072, 0, 0, 4096, 3072),
    DepthMode.NFOV_2X2BINNED: ModeInfo(512, 512, 96, 90, 320, 288),
    DepthMode.NFOV_UNBINNED: ModeInfo(1024, 1024, 192, 180, 640, 576),
    DepthMode.WFOV_2X2BINNED: ModeInfo(512, 512, 0, 0, 512, 512),
    DepthMode.WFOV_UNBINNED: ModeInfo(1024, 1024, 0, 0, 1024, 1024),
    DepthMode.PASSIVE_IR: ModeInfo(1024, 1024, 0, 0, 1024, 1024),
}

DEPTH_SENSOR_SIZE = (1024, 1024)
COLOR_SENSOR_SIZE = (4096, 3072)
# Early calibrations describe the color camera on a 16:9 window (4096x2304) of the 4:3 sensor,
# 384 rows below its top; they are re-expressed on the 4:3 sensor before the mode table applies.
LEGACY_COLOR_WINDOW = ModeInfo(4096, 2304, 0, -384, 4096, 3072)
