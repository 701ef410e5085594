"""The calibration of one device in one pair of capture modes (depth and colour camera models and
the extrinsics between them), as pyk4a's `Calibration`: it owns its registration
(`K4aCalibration.registration`, built once and cached, as pyk4a's calibration owns its
transformation handle).

Where the pieces live: capture modes in `k4a.modes`, the lens model in `k4a.camera_model`, the
device file in `k4a.raw_calibration`, a synthetic device in `k4a.synthetic_calibration`, rigid
transforms in `mmface4d_stream.geometry`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mmface4d_stream.geometry import RigidTransform
from mmface4d_stream.k4a.camera_model import CameraModel
from mmface4d_stream.k4a.modes import ColorResolution, DepthMode
from mmface4d_stream.k4a.raw_calibration import RawCalibration, build_raw_calibration_json, parse_raw_calibration

if TYPE_CHECKING:
    from mmface4d_stream.k4a.registration import DepthToColorRegistration

__all__ = ["K4aCalibration"]


@dataclass(frozen=True, eq=False)
class K4aCalibration:
    """Depth and color camera models of one device in one color resolution and depth mode.

    `T_color_from_depth` maps depth-camera points (metres) to color-camera points.
    """

    depth: CameraModel
    color: CameraModel
    T_color_from_depth: RigidTransform
    color_resolution: ColorResolution
    depth_mode: DepthMode
    raw: RawCalibration | None = None
    _registration: list = field(default_factory=list, init=False, repr=False, compare=False)
    _registration_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    @classmethod
    def from_raw_json(
        cls,
        data: bytes | bytearray | str | dict,
        color_resolution: ColorResolution | str | int,
        depth_mode: DepthMode | str,
    ) -> K4aCalibration:
        """Parse `calibration.json` content and build the models for the given modes."""
        color_resolution = ColorResolution.parse(color_resolution)
        depth_mode = DepthMode.parse(depth_mode)
        return parse_raw_calibration(data).calibration(color_resolution, depth_mode)

    @property
    def registration(self) -> DepthToColorRegistration:
        """This calibration's depth <-> colour registration with default settings, built on first
        use (~0.25 s of tables) and kept: one per device and mode pair, shared by threads."""
        with self._registration_lock:
            if not self._registration:
                from mmface4d_stream.k4a.registration import DepthToColorRegistration

                self._registration.append(DepthToColorRegistration(self))
            return self._registration[0]

    def __getstate__(self) -> dict:
        # Pickled without its registration (tables are rebuilt where they are used) or lock.
        state = dict(self.__dict__)
        state.pop("_registration", None)
        state.pop("_registration_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        for key, value in state.items():
            object.__setattr__(self, key, value)
        object.__setattr__(self, "_registration", [])
        object.__setattr__(self, "_registration_lock", threading.Lock())

    @property
    def serial_number(self) -> str:
        return self.raw.serial_number if self.raw is not None else ""

    def to_raw_json(self) -> bytes:
        """The device `calibration.json` this calibration came from."""
        if self.raw is None:
            raise ValueError("this calibration was not built from a raw device calibration.")
        return build_raw_calibration_json(self.raw)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, K4aCalibration):
            return NotImplemented
        return (
            self.depth == other.depth
            and self.color == other.color
            and self.T_color_from_depth == other.T_color_from_depth
            and self.color_resolution == other.color_resolution
            and self.depth_mode == other.depth_mode
        )

    __hash__ = None  # type: ignore[assignment]
