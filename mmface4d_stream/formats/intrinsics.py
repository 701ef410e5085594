"""Per-camera intrinsics `<seq>_<cam>.json`: Open3D's Azure Kinect metadata layout.

Keys: `color_mode`, `depth_mode`, `height`, `width`, `intrinsic_matrix` (3x3, column-major, so
`[fx, 0, 0, 0, fy, 0, cx, cy, 1]`), `serial_number`, `stream_length_usec`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmface4d_stream.errors import InputError

_REQUIRED_KEYS = ("intrinsic_matrix", "width", "height")


@dataclass(frozen=True)
class IntrinsicsJson:
    """Pinhole intrinsics of a color camera in pixels, with the recording's metadata."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    color_mode: str = "MJPG_1080P"
    depth_mode: str = "NFOV_UNBINNED"
    serial_number: str = ""
    stream_length_usec: int = 0

    @property
    def K(self) -> np.ndarray:
        """(3, 3) float64 camera matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def camera_model(self):
        """The pinhole `k4a.camera_model.CameraModel` of these intrinsics (no lens distortion)."""
        from mmface4d_stream.k4a.camera_model import CameraModel

        return CameraModel(int(self.width), int(self.height), float(self.fx), float(self.fy), float(self.cx),
                           float(self.cy))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "IntrinsicsJson":
        path = Path(path)
        if not path.is_file():
            raise InputError("file not found", path)
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"not valid JSON ({exc})", path) from None
        if not isinstance(data, dict):
            raise InputError(f"expected a JSON object, got {type(data).__name__}", path)
        missing = [k for k in _REQUIRED_KEYS if k not in data]
        if missing:
            raise InputError(f"missing key(s) {', '.join(missing)}", path)
        raw = data["intrinsic_matrix"]
        if not isinstance(raw, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                for v in raw):
            raise InputError(f"intrinsic_matrix must be a list of 9 numbers, got {json.dumps(raw)[:60]}", path)
        matrix = np.asarray(raw, dtype=np.float64)
        if matrix.size != 9:
            raise InputError(f"intrinsic_matrix has {matrix.size} values, expected 9", path)
        if not np.isfinite(matrix).all():
            raise InputError("intrinsic_matrix holds NaN or infinite values", path)
        K = matrix.reshape(3, 3).T  # stored column-major
        if not (K[0, 0] > 0 and K[1, 1] > 0):
            raise InputError(f"focal lengths must be positive, got fx={K[0, 0]:g}, fy={K[1, 1]:g}", path)
        sizes = {}
        for key in ("width", "height"):
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InputError(f"{key} must be a positive integer, got {json.dumps(value)[:40]}", path)
            sizes[key] = value
        length = data.get("stream_length_usec", 0)
        if isinstance(length, bool) or not isinstance(length, (int, float)) or not np.isfinite(length):
            raise InputError(f"stream_length_usec must be a number, got {json.dumps(length)[:40]}", path)
        return cls(fx=float(K[0, 0]), fy=float(K[1, 1]), cx=float(K[0, 2]), cy=float(K[1, 2]),
                   width=sizes["width"], height=sizes["height"],
                   color_mode=str(data.get("color_mode", "")), depth_mode=str(data.get("depth_mode", "")),
                   serial_number=str(data.get("serial_number", "")),
                   stream_length_usec=int(length))

    def to_dict(self) -> dict:
        matrix = [self.fx, 0.0, 0.0, 0.0, self.fy, 0.0, self.cx, self.cy, 1.0]
        return {
            "color_mode": self.color_mode,
            "depth_mode": self.depth_mode,
            "height": self.height,
            "intrinsic_matrix": [float(v) for v in matrix],
            "serial_number": self.serial_number,
            "stream_length_usec": int(self.stream_length_usec),
            "width": self.width,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the JSON in Open3D's style (tab indent, sorted keys), via a temporary file."""
        from mmface4d_stream.formats.output_files import replacing

        with replacing(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent="\t", sort_keys=True, separators=(",", " : ")) + "\n")
