"""A plausible synthetic device calibration (typical Azure Kinect values), for synthetic recordings
and tests without a device file."""

from __future__ import annotations

import math

import numpy as np

from mmface4d_stream.geometry import RigidTransform
from mmface4d_stream.k4a.raw_calibration import (
    COLOR_LOCATION,
    COLOR_PURPOSE,
    DEPTH_LOCATION,
    DEPTH_PURPOSE,
    RawCalibration,
    RawCamera,
)

__all__ = ["synthetic_raw_calibration"]


def synthetic_raw_calibration(
    serial_number: str = "000000000000",
    *,
    T_color_from_depth: RigidTransform | None = None,
    distortion: bool = True,
) -> RawCalibration:
    """A plausible device calibration (typical Azure Kinect values) for synthetic recordings.

    The depth camera's `Rt` is the identity; the color camera sits ~32 mm to the side and is
    tilted ~5 degrees as on a real device unless `T_color_from_depth` says otherwise.
    `distortion=False` gives pinhole cameras (what an OpenGL renderer produces).
    """
    if T_color_from_depth is None:
        tilt = math.radians(-4.95)
        R = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(tilt), -math.sin(tilt)], [0.0, math.sin(tilt), math.cos(tilt)]])
        T_color_from_depth = RigidTransform(R, [-0.032, -0.0022, 0.0039])
    depth_dist = dict(k1=0.55, k2=-0.02, k3=-0.0027, k4=0.89, k5=0.086, k6=-0.014, p1=2.0e-5, p2=-7.0e-5)
    color_dist = dict(k1=0.33, k2=-2.49, k3=1.45, k4=0.21, k5=-2.30, k6=1.38, p1=-1.6e-4, p2=-1.3e-4)
    if not distortion:
        depth_dist = {k: 0.0 for k in depth_dist}
        color_dist = {k: 0.0 for k in color_dist}
    depth = RawCamera(
        cx=0.5130, cy=0.5170, fx=0.4928, fy=0.4929, metric_radius=1.74 if distortion else 0.0,
        sensor_width=1024, sensor_height=1024, location=DEPTH_LOCATION, purpose=DEPTH_PURPOSE, **depth_dist,
    )
    color = RawCamera(
        cx=0.4998, cy=0.5066, fx=0.4780, fy=0.6374, metric_radius=0.0,
        sensor_width=4096, sensor_height=3072, T_camera_from_depth=T_color_from_depth,
        location=COLOR_LOCATION, purpose=COLOR_PURPOSE, **color_dist,
    )
    return RawCalibration(depth=depth, color=color, serial_number=serial_number, notes="synthetic")
