"""A JSON-able summary of an Azure Kinect recording (`describe_mkv`, the `describe` command)."""

from __future__ import annotations

import os
from typing import Any

from mmface4d_stream.k4a.mkv_reader import MkvReader


def _intrinsics_dict(camera) -> dict:
    return {
        "width": camera.width, "height": camera.height,
        "fx": camera.fx, "fy": camera.fy, "cx": camera.cx, "cy": camera.cy,
    }


def describe_mkv(path: str | os.PathLike) -> dict:
    """A JSON-able summary of a Kinect recording: modes, frame count, duration (µs), serial
    number, sync mode, delays, and the pixel intrinsics of the cameras it recorded."""
    with MkvReader(path) as reader:
        stamps = list(reader.scan_timestamps())
        first = stamps[0] if stamps else {}
        last = stamps[-1] if stamps else {}
        per_track = {t: sum(1 for s in stamps if t in s) for t in reader.tracks}
        summary: dict[str, Any] = {
            "path": str(reader.path),
            "serial_number": reader.serial_number,
            "color_mode": reader.color_mode.name if reader.color_mode else "OFF",
            "depth_mode": reader.depth_mode.value if reader.depth_mode else "OFF",
            "ir_mode": reader.ir_mode or "OFF",
            "fps": reader.fps,
            "tracks": list(reader.tracks) + (["IMU"] if reader.has_imu else []),
            "frames": len(stamps),
            "frames_per_track": per_track,
            "duration_usec": reader.duration_usec,
            "first_timestamp_usec": min(first.values()) if first else None,
            "last_timestamp_usec": max(last.values()) if last else None,
            "start_offset_usec": reader.start_offset_usec,
            "wired_sync_mode": reader.wired_sync_mode,
            "depth_delay_usec": reader.depth_delay_usec,
            "subordinate_delay_usec": reader.subordinate_delay_usec,
        }
        calibration = reader.calibration
        cameras = {}
        if reader.color_mode is not None:
            cameras["color"] = _intrinsics_dict(calibration.color)
        if reader.depth_mode is not None:
            cameras["depth"] = _intrinsics_dict(calibration.depth)
        summary["intrinsics"] = cameras
        return summary
