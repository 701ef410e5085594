"""Small typed records that travel between pipeline stages (and between Ray actors).

Big arrays cross a stage boundary once: sources emit full frames, the landmark stage crops each
camera to the face, and everything after works on crops and meshes. Times: `t_capture_ns` is the
capture instant (device timestamp for Kinects, frame index / fps for files), `t_source_ns` the
host's monotonic clock when the source emitted the frame (for latency), both nanoseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class CameraFrame:
    """One camera's images of one frame.

    rgb: (H, W, 3) uint8 color image. depth_mm: (H, W) uint16 millimetres registered to the color
    camera (0 = no measurement), or None. intrinsics: the color camera (anything
    `fit.camera_terms.FitCamera.of` accepts: `IntrinsicsJson`, k4a `CameraModel`, `FitCamera`).

    Depth not yet registered (MKV replay: the landmark stage registers only the face's box):
    depth_mm None, depth_raw (Hd, Wd) uint16 millimetres as the depth camera saw them, and
    calibration the `k4a.calibration.K4aCalibration` that registers it to `rgb`
    (`pipeline.sources.DepthRegistrations` does).

    Colour not yet decoded (live MKV replay: only the frame sets the graph takes are decoded, and
    a frame set travels to per-camera landmark actors as ~50 KB JPEGs instead of 6 MB images):
    rgb None and color_jpeg the MJPEG frame (`pipeline.sources.with_rgb` decodes it).
    """

    camera: int
    serial: str
    rgb: np.ndarray | None
    depth_mm: np.ndarray | None
    intrinsics: Any
    t_device_us: int | None = None
    depth_raw: np.ndarray | None = None
    calibration: Any = None
    color_jpeg: bytes | None = None


@dataclass
class FrameSet:
    """All cameras of one synchronized frame of sequence `seq` (`cameras[i]` None: dropped)."""

    seq: str
    frame: int
    t_capture_ns: int
    cameras: list[CameraFrame | None]
    t_source_ns: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class FaceCrop:
    """One camera after landmark detection, cropped around the face.

    landmarks_px: (478, 2) float32 in crop pixels (NaN: not found). depth_mm: (h, w) uint16 crop of
    the registered depth, or None. intrinsics: the camera of the whole image (as the source gave
    it); `offset_px` (x0, y0): the crop's top-left pixel in that image. thumbnail_jpeg: a small JPEG of the crop for previews, or None.
    color_rgb: uint8 (h, w, 3) RGB of the same crop as depth_mm, only when the fitter's photometric
    term needs it (`fitter.raster: depth+color`), else None.
    """

    camera: int
    serial: str
    found: bool
    confidence: float
    landmarks_px: np.ndarray
    depth_mm: np.ndarray | None
    intrinsics: Any
    offset_px: tuple[int, int]
    thumbnail_jpeg: tuple[bytes, int, int] | None = None  # (JPEG bytes, width, height)
    color_rgb: np.ndarray | None = None


@dataclass
class ObservedFrame:
    """A frame set after landmark detection: crops of every camera (None: camera dropped).

    hurry: fit it the fast way (set by the live policy on a frame that reaches the fitter late:
    `fit.fit_io.FrameObservation.hurry`).
    """

    seq: str
    frame: int
    t_capture_ns: int
    crops: list[FaceCrop | None]
    t_source_ns: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
    hurry: bool = False


@dataclass
class MeshFrame:
    """A reconstructed mesh: vertices (N, 3) float32 metres in the reference camera's frame.

    lost: no camera saw a face (the vertices carry the previous frame's, or NaN before the first).
    """

    seq: str
    frame: int
    t_capture_ns: int
    vertices: np.ndarray
    lost: bool
    flags: tuple[str, ...] = ()
    residuals: dict[str, float] = field(default_factory=dict)
    smoothed: bool = False
    cameras: tuple[str, ...] = ()
    thumbnails: tuple[tuple[int, bytes, int, int], ...] = ()  # (camera, JPEG, width, height)
    t_source_ns: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
