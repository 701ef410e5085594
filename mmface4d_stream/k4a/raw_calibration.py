"""The raw device calibration (`calibration.json`): parsing, writing and the per-mode camera models.

A Kinect stores one factory calibration per device (the MKV attachment `calibration.json`, or
`k4a_device_get_raw_calibration` on a live device): each camera on its full sensor with
normalized intrinsics, its lens parameters and its extrinsics `Rt` (depth camera frame -> that
camera's frame, translation in metres; the depth camera's own `Rt` is the identity; the SDK
multiplies translations by 1000 for its millimetre API, everything here is in metres).
`RawCamera.camera_model(mode)` applies the mode table (see `camera_model` for the pixel
intrinsics and the lens model).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from os import PathLike
from typing import TYPE_CHECKING, Any

import numpy as np

from mmface4d_stream.errors import InputError
from mmface4d_stream.geometry import RigidTransform
from mmface4d_stream.k4a.camera_model import BROWN_CONRADY, DEFAULT_METRIC_RADIUS, SUPPORTED_MODELS, CameraModel
from mmface4d_stream.k4a.modes import (
    COLOR_SENSOR_SIZE,
    DEPTH_SENSOR_SIZE,
    LEGACY_COLOR_WINDOW,
    MODE_TABLE,
    ColorResolution,
    DepthMode,
)

if TYPE_CHECKING:
    from mmface4d_stream.k4a.calibration import K4aCalibration

__all__ = ["DEPTH_LOCATION", "COLOR_LOCATION", "DEPTH_PURPOSE", "COLOR_PURPOSE", "RawCamera", "RawCalibration",
           "parse_raw_calibration", "read_raw_calibration", "build_raw_calibration_json"]

DEPTH_LOCATION = "CALIBRATION_CameraLocationD0"
COLOR_LOCATION = "CALIBRATION_CameraLocationPV0"
DEPTH_PURPOSE = "CALIBRATION_CameraPurposeDepth"
COLOR_PURPOSE = "CALIBRATION_CameraPurposePhotoVideo"


@dataclass(frozen=True)
class RawCamera:
    """One camera of the raw calibration: normalized full-sensor intrinsics and extrinsics.

    cx, cy, fx, fy are divided by the sensor width/height (origin at the top-left corner of the
    top-left pixel); `T_camera_from_depth` is the JSON `Rt` (translation in metres).
    `metric_radius` is stored as read (0 means "not estimated"; models then use 1.7).
    """

    cx: float
    cy: float
    fx: float
    fy: float
    k1: float = 0.0
    k2: float = 0.0
    k3: float = 0.0
    k4: float = 0.0
    k5: float = 0.0
    k6: float = 0.0
    codx: float = 0.0
    cody: float = 0.0
    p2: float = 0.0
    p1: float = 0.0
    metric_radius: float = 0.0
    sensor_width: int = 1024
    sensor_height: int = 1024
    T_camera_from_depth: RigidTransform = field(default_factory=RigidTransform.identity)
    model_type: str = BROWN_CONRADY
    location: str = DEPTH_LOCATION
    purpose: str = DEPTH_PURPOSE

    @property
    def model_parameters(self) -> list[float]:
        """The 14 JSON `ModelParameters` in the device's order (p2 before p1)."""
        return [self.cx, self.cy, self.fx, self.fy, self.k1, self.k2, self.k3, self.k4, self.k5, self.k6,
                self.codx, self.cody, self.p2, self.p1]

    def camera_model(self, mode: ColorResolution | DepthMode) -> CameraModel:
        """Pixel intrinsics of this camera for a capture mode (see the module docstring)."""
        if isinstance(mode, DepthMode):
            if (self.sensor_width, self.sensor_height) != DEPTH_SENSOR_SIZE:
                raise ValueError(
                    f"the depth camera calibration must describe a 1024x1024 sensor, got "
                    f"{self.sensor_width}x{self.sensor_height}."
                )
            cx, cy, fx, fy = self.cx, self.cy, self.fx, self.fy
        elif isinstance(mode, ColorResolution):
            cx, cy, fx, fy = self.cx, self.cy, self.fx, self.fy
            w, h = self.sensor_width, self.sensor_height
            if w * 9 // 16 == h:
                info = LEGACY_COLOR_WINDOW
                cx = (cx * info.binned_width - info.crop_x) / info.width
                cy = (cy * info.binned_height - info.crop_y) / info.height
                fx = fx * info.binned_width / info.width
                fy = fy * info.binned_height / info.height
            elif w * 3 // 4 != h:
                raise ValueError(
                    f"the color camera calibration must describe a 4:3 (or legacy 16:9) sensor, got {w}x{h}."
                )
        else:
            raise ValueError(f"expected a ColorResolution or DepthMode, got {mode!r}.")
        info = MODE_TABLE[mode]
        radius = self.metric_radius if self.metric_radius > 1e-4 else DEFAULT_METRIC_RADIUS
        return CameraModel(
            width=info.width,
            height=info.height,
            fx=fx * info.binned_width,
            fy=fy * info.binned_height,
            cx=cx * info.binned_width - info.crop_x - 0.5,
            cy=cy * info.binned_height - info.crop_y - 0.5,
            k1=self.k1, k2=self.k2, k3=self.k3, k4=self.k4, k5=self.k5, k6=self.k6,
            p1=self.p1, p2=self.p2, codx=self.codx, cody=self.cody,
            metric_radius=radius,
            model_type=self.model_type,
        )

    @classmethod
    def from_pixel_intrinsics(
        cls,
        mode: ColorResolution | DepthMode,
        fx: float,
        fy: float,
        cx: float,
        cy: float,
        *,
        T_camera_from_depth: RigidTransform | None = None,
        metric_radius: float = 0.0,
        **distortion: float,
    ) -> RawCamera:
        """The raw camera whose `camera_model(mode)` has these pixel intrinsics (the inverse of
        the mode scaling): for a renderer that picks a pixel camera and needs a device file.

        `distortion`: any of k1..k6, p1, p2 (default 0: a pinhole camera).
        """
        unknown = set(distortion) - {"k1", "k2", "k3", "k4", "k5", "k6", "p1", "p2"}
        if unknown:
            raise ValueError(f"unknown distortion parameters {sorted(unknown)}; expected k1..k6, p1, p2.")
        info = MODE_TABLE[mode]
        if isinstance(mode, DepthMode):
            sensor, location, purpose = DEPTH_SENSOR_SIZE, DEPTH_LOCATION, DEPTH_PURPOSE
        else:
            sensor, location, purpose = COLOR_SENSOR_SIZE, COLOR_LOCATION, COLOR_PURPOSE
        return cls(
            cx=(cx + 0.5 + info.crop_x) / info.binned_width,
            cy=(cy + 0.5 + info.crop_y) / info.binned_height,
            fx=fx / info.binned_width,
            fy=fy / info.binned_height,
            metric_radius=metric_radius,
            sensor_width=sensor[0],
            sensor_height=sensor[1],
            T_camera_from_depth=T_camera_from_depth or RigidTransform.identity(),
            location=location,
            purpose=purpose,
            **{k: float(v) for k, v in distortion.items()},
        )


def _default_inertial_sensors() -> tuple[dict, ...]:
    """A plausible gyro + accelerometer entry (identity mixing, zero bias), so that files we write
    have every section the Kinect SDK requires when it opens them."""
    # The IMU axes of an Azure Kinect are rotated against the depth camera's (x' = -y-ish, ...);
    # an exact device-like rotation is not needed by anything here, only a valid one.
    rotation = [0.0, 0.1045, -0.9945, -1.0, 0.0, 0.0, 0.0, 0.9945, 0.1045]

    def sensor(kind: str, mask: int, noise: float, uncertainty: float, translation: list[float]) -> dict:
        mixing = [0.0] * 36
        for i in (0, 16, 32):
            mixing[i] = 1.0
        return {
            "BiasTemperatureModel": [0.0] * 12,
            "BiasUncertainty": [uncertainty] * 3,
            "Id": "CALIBRATION_InertialSensorId_LSM6DSM",
            "MixingMatrixTemperatureModel": mixing,
            "ModelTypeMask": mask,
            "Noise": [noise] * 3 + [0.0] * 3,
            "Rt": {"Rotation": list(rotation), "Translation": translation},
            "SecondOrderScaling": [0.0] * 9,
            "SensorType": kind,
            "TemperatureBounds": [5.0, 60.0],
            "TemperatureC": 0.0,
        }

    return (
        sensor("CALIBRATION_InertialSensorType_Gyro", 16, 0.00095, 0.0001, [0.0, 0.0, 0.0]),
        sensor("CALIBRATION_InertialSensorType_Accelerometer", 56, 0.0107, 0.01, [-0.051, 0.0035, 0.0013]),
    )


@dataclass(frozen=True)
class RawCalibration:
    """The device calibration as stored in `calibration.json` (both cameras, all modes).

    `inertial_sensors` keeps the IMU entries as read (JSON objects), so files we write carry them.
    """

    depth: RawCamera
    color: RawCamera
    serial_number: str = ""
    factory_cal_date: str = ""
    device_name: str = "AzureKinect-PV"
    version: tuple[int, int] = (1, 2)
    notes: str = ""
    inertial_sensors: tuple[dict, ...] = field(default_factory=_default_inertial_sensors)

    @property
    def T_color_from_depth(self) -> RigidTransform:
        return self.color.T_camera_from_depth.compose(self.depth.T_camera_from_depth.inverse())

    def calibration(self, color_resolution: ColorResolution | str | int, depth_mode: DepthMode | str) -> K4aCalibration:
        """Camera models for one color resolution and depth mode."""
        from mmface4d_stream.k4a.calibration import K4aCalibration

        color_resolution = ColorResolution.parse(color_resolution)
        depth_mode = DepthMode.parse(depth_mode)
        return K4aCalibration(
            depth=self.depth.camera_model(depth_mode),
            color=self.color.camera_model(color_resolution),
            T_color_from_depth=self.T_color_from_depth,
            color_resolution=color_resolution,
            depth_mode=depth_mode,
            raw=self,
        )

    def to_json(self, indent: int | None = 4) -> bytes:
        """The calibration as device-style `calibration.json` bytes (see `build_raw_calibration_json`)."""
        return build_raw_calibration_json(self, indent=indent)


# ----------------------------------------------------------------------------------------------
# Parsing and writing calibration.json


def _get(obj: Any, key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise ValueError(f"Kinect calibration JSON: {where} has no {key!r} entry.")
    value = obj[key]
    if kind is float:
        kind = (int, float)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"Kinect calibration JSON: {where}.{key} has the wrong type ({type(value).__name__}).")
    return value


def _numbers(values: Any, count: int, where: str) -> list[float]:
    if not isinstance(values, list) or len(values) < count:
        raise ValueError(f"Kinect calibration JSON: {where} must be a list of at least {count} numbers.")
    out = []
    for v in values[:count]:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"Kinect calibration JSON: {where} holds a non-number ({v!r}).")
        out.append(float(v))
    return out


def _parse_camera(camera: dict, where: str) -> RawCamera:
    intr = _get(camera, "Intrinsics", where, dict)
    model_type = _get(intr, "ModelType", where + ".Intrinsics", str)
    if model_type not in SUPPORTED_MODELS:
        raise ValueError(
            f"Kinect calibration JSON: {where} uses lens model {model_type!r}; only Brown-Conrady "
            f"(and the legacy Rational6KT) are supported."
        )
    count = _get(intr, "ModelParameterCount", where + ".Intrinsics", int)
    if count < 14:
        raise ValueError(f"Kinect calibration JSON: {where} has {count} lens parameters, expected 14.")
    params = _numbers(_get(intr, "ModelParameters", where + ".Intrinsics", list), 14, where + ".ModelParameters")
    rt = _get(camera, "Rt", where, dict)
    rotation = _numbers(_get(rt, "Rotation", where + ".Rt", list), 9, where + ".Rt.Rotation")
    translation = _numbers(_get(rt, "Translation", where + ".Rt", list), 3, where + ".Rt.Translation")
    width = _get(camera, "SensorWidth", where, int)
    height = _get(camera, "SensorHeight", where, int)
    radius = float(_get(camera, "MetricRadius", where, float))
    R = np.array(rotation).reshape(3, 3)
    if abs(np.linalg.det(R) - 1.0) > 1e-3 or not np.allclose(R @ R.T, np.eye(3), atol=1e-3):
        raise ValueError(f"Kinect calibration JSON: {where}.Rt.Rotation is not a rotation matrix.")
    if np.abs(translation).max() > 1.0:
        # The device stores metres; a baseline over a metre means the file holds millimetres.
        raise ValueError(
            f"Kinect calibration JSON: {where}.Rt.Translation {translation} looks like millimetres; "
            f"calibration.json stores metres."
        )
    cx, cy, fx, fy, k1, k2, k3, k4, k5, k6, codx, cody, p2, p1 = params
    if not (fx > 0 and fy > 0):
        raise ValueError(f"Kinect calibration JSON: {where} has non-positive focal lengths ({fx}, {fy}).")
    return RawCamera(
        cx=cx, cy=cy, fx=fx, fy=fy, k1=k1, k2=k2, k3=k3, k4=k4, k5=k5, k6=k6,
        codx=codx, cody=cody, p2=p2, p1=p1, metric_radius=radius,
        sensor_width=width, sensor_height=height,
        T_camera_from_depth=RigidTransform(R, np.array(translation)),
        model_type=model_type,
        location=str(camera.get("Location", "")),
        purpose=str(camera.get("Purpose", "")),
    )


def parse_raw_calibration(data: bytes | bytearray | str | dict) -> RawCalibration:
    """Parse a Kinect `calibration.json` (bytes or text, as attached to an MKV, or its decoded dict).

    Raises ValueError with one sentence on invalid JSON or a missing/ill-typed entry.
    """
    if isinstance(data, dict):
        doc = data
    else:
        if isinstance(data, (bytes, bytearray)):
            # Device blobs end with a NUL terminator.
            data = bytes(data).rstrip(b"\x00").decode("utf-8", errors="strict")
        if not isinstance(data, str):
            raise ValueError(f"Kinect calibration must be JSON bytes, text or a dict, got {type(data).__name__}.")
        try:
            doc = json.loads(data.rstrip("\x00"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"Kinect calibration is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}.") from None
    info = _get(doc, "CalibrationInformation", "the document", dict)
    cameras = _get(info, "Cameras", "CalibrationInformation", list)
    found: dict[str, RawCamera] = {}
    for i, camera in enumerate(cameras):
        if not isinstance(camera, dict):
            raise ValueError(f"Kinect calibration JSON: Cameras[{i}] is not an object.")
        location = camera.get("Location")
        if location in (DEPTH_LOCATION, COLOR_LOCATION) and location not in found:
            found[location] = _parse_camera(camera, f"Cameras[{i}] ({location})")
    for location, name in ((DEPTH_LOCATION, "depth"), (COLOR_LOCATION, "color")):
        if location not in found:
            raise ValueError(f"Kinect calibration JSON has no {name} camera (Location {location}).")
    meta = info.get("Metadata", {}) if isinstance(info.get("Metadata", {}), dict) else {}
    version = meta.get("Version", {}) if isinstance(meta.get("Version", {}), dict) else {}
    inertial = info.get("InertialSensors", [])
    return RawCalibration(
        depth=found[DEPTH_LOCATION],
        color=found[COLOR_LOCATION],
        serial_number=str(meta.get("SerialId", "")),
        factory_cal_date=str(meta.get("FactoryCalDate", "")),
        device_name=str(meta.get("DeviceName", "")),
        version=(int(version.get("Major", 1)), int(version.get("Minor", 2))),
        notes=str(meta.get("Notes", "")),
        inertial_sensors=tuple(s for s in inertial if isinstance(s, dict)) if isinstance(inertial, list) else (),
    )


def read_raw_calibration(path: str | PathLike) -> RawCalibration:
    """Parse a `calibration.json` file; a missing or bad file raises InputError naming it."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise InputError(f"cannot read the Kinect calibration: {exc.strerror}", path=path) from None
    try:
        return parse_raw_calibration(data)
    except ValueError as exc:
        raise InputError(str(exc), path=path) from None


def _camera_json(camera: RawCamera) -> dict:
    T = camera.T_camera_from_depth
    return {
        "Intrinsics": {
            "ModelParameterCount": 14,
            "ModelParameters": [float(v) for v in camera.model_parameters],
            "ModelType": camera.model_type,
        },
        "Location": camera.location,
        "Purpose": camera.purpose,
        "MetricRadius": float(camera.metric_radius),
        "Rt": {
            "Rotation": [float(v) for v in T.R.reshape(-1)],
            "Translation": [float(v) for v in T.t],
        },
        "SensorHeight": int(camera.sensor_height),
        "SensorWidth": int(camera.sensor_width),
        "Shutter": "CALIBRATION_ShutterTypeUndefined",
        "ThermalAdjustmentParams": {"Params": [0.0] * 12},
    }


def build_raw_calibration_json(raw: RawCalibration, indent: int | None = 4) -> bytes:
    """Device-style `calibration.json` bytes for `raw` (depth camera first, then color, then IMU).

    Floats are written exactly (shortest round-trip repr), so
    `parse_raw_calibration(build_raw_calibration_json(raw)) == raw`.
    """
    depth = replace(raw.depth, location=raw.depth.location or DEPTH_LOCATION, purpose=raw.depth.purpose or DEPTH_PURPOSE)
    color = replace(raw.color, location=raw.color.location or COLOR_LOCATION, purpose=raw.color.purpose or COLOR_PURPOSE)
    if depth.location != DEPTH_LOCATION or color.location != COLOR_LOCATION:
        raise ValueError(
            f"the depth camera must have Location {DEPTH_LOCATION} and the color camera {COLOR_LOCATION}, "
            f"got {depth.location!r} and {color.location!r}."
        )
    doc = {
        "CalibrationInformation": {
            "Cameras": [_camera_json(depth), _camera_json(color)],
            "InertialSensors": [dict(s) for s in raw.inertial_sensors],
            "Metadata": {
                "SerialId": raw.serial_number,
                "FactoryCalDate": raw.factory_cal_date,
                "Version": {"Major": int(raw.version[0]), "Minor": int(raw.version[1])},
                "DeviceName": raw.device_name,
                "Notes": raw.notes,
            },
        }
    }
    return json.dumps(doc, indent=indent).encode("utf-8")
