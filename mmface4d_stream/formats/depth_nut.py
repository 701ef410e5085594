"""MMFace4D depth videos `<seq>_<cam>.nut`: uint16 millimetres, FFV1 gray16le, 30 fps.

In the dataset the depth is registered to the color camera (1920x1080); any resolution works here.
"""

from __future__ import annotations

import os

import numpy as np

from mmface4d_stream.formats.gray16_video import Gray16VideoReader, Gray16VideoWriter


class DepthNutWriter(Gray16VideoWriter):
    """Stream depth frames, uint16 (height, width) millimetres (0 = no measurement), to a NUT file."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, fps: int = 30, atomic: bool = False,
                 keep_on_write_error: bool = False):
        super().__init__(path, width, height, fps=fps, atomic=atomic, keep_on_write_error=keep_on_write_error)

    def write(self, depth_mm: np.ndarray) -> None:
        """Append one frame: uint16 (height, width) in millimetres."""
        super().write(depth_mm)


class DepthNutReader(Gray16VideoReader):
    """Stream depth frames from a NUT file: iterating yields uint16 (height, width) millimetres."""
