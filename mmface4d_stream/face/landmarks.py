"""Face landmarks per camera frame: MediaPipe FaceMesh (478 points) run on a crop around the face.

FaceMesh's own detector is the short-range model: it sees the whole image at 128 px, so on a
1920×1080 Kinect frame a face narrower than ~200-250 px is missed (the MMFace4D captures have faces
~200 px wide). The strategy here:

1. Find a region of interest (ROI): the previous frame's landmarks when the face was tracked;
   otherwise the nearest blob of the registered depth map when one is given, then the full-range
   FaceDetection model (`model_selection=1`) over the whole frame.
2. A tracked face: run FaceMesh's landmark model alone (`roi_mesh.RoiFaceMesh`, no detector) on
   the region MediaPipe's tracking rule derives from the previous landmarks; its face-presence
   score rejects a region that no longer holds a face. A face that moved far within its region
   (`LandmarkerConfig.retrack_shift`) is run once more on the region of the new landmarks.
3. Otherwise (a found ROI, or a tracked region the landmark model rejected): run the whole FaceMesh
   graph (`static_image_mode=True`, `refine_landmarks=True`) on a square crop around the ROI, where
   the face is large. Static mode runs FaceMesh's detector inside the crop, so a crop that no longer
   holds a face yields no landmarks instead of drifting landmarks.
4. When the tracked crop loses the face, detection is tried again in the same frame; when that
   fails too the frame is reported with `found=False` (NaN points), never guessed.

Pixel convention: `points_px` has pixel centres at integer coordinates (pixel (i, j) covers
[i - 0.5, i + 0.5)), the convention of the Kinect pinhole intrinsics (`cx`, `cy`), so points can be
unprojected with the colour camera's intrinsic matrix directly. All models come from the installed
mediapipe package; nothing is downloaded.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .roi_mesh import FaceRegion, RoiFaceMesh, region_from_landmarks

logger = logging.getLogger(__name__)

N_LANDMARKS = 478
"""FaceMesh points with `refine_landmarks=True`: 468 mesh points plus 10 iris points."""

_FACEMESH_DETECTOR_SCORE_PARAM = (
    "facedetectionshortrangecpu__facedetectionshortrange__facedetection__"
    "TensorsToDetectionsCalculator.min_score_thresh"
)
_FACEMESH_PRESENCE_PARAM = "facelandmarkcpu__ThresholdingCalculator.threshold"


class LandmarkResult(NamedTuple):
    """Landmarks of one face in one frame.

    points_px: (478, 2) float32 full-frame pixel coordinates (x right, y down; pixel centres at
        integers). NaN when `found` is False.
    z: (478,) float32 relative depth in pixels (MediaPipe's z scaled like x): smaller is closer to
        the camera, zero near the head's centre. NaN when `found` is False.
    confidence: score in [0, 1]: FaceMesh's face detector on the crop, or for a face tracked by its
        region alone the landmark model's face-presence score; 0 when not found.
    found: whether a face was found in this frame.
    roi: (x0, y0, x1, y1) integer pixel box of the crop FaceMesh ran on (it may extend past the
        frame, which is padded with black); (0, 0, W, H) when no crop was found.
    roi_source: how the ROI was chosen: "tracked", "depth", "detector", or "none".
    """

    points_px: np.ndarray
    z: np.ndarray
    confidence: float
    found: bool
    roi: tuple[int, int, int, int]
    roi_source: str = "none"


@dataclass(frozen=True)
class LandmarkerConfig:
    """Settings of `FaceLandmarker` (defaults measured on 1080p faces 130-330 px wide).

    detection_confidence: minimum score of the full-range detector and of FaceMesh's detector.
    presence_confidence: minimum FaceMesh face-presence score for landmarks to be kept.
    crop_scale_tracked: crop side / larger side of the previous landmarks' bounding box.
    crop_scale_detected: crop side / larger side of the full-range detector's face box.
    min_crop_px: smallest crop side in pixels (tiny boxes are noise or far faces).
    depth_band_mm: depth blob = pixels no further than this behind the nearest surface.
    depth_min_mm, depth_max_mm: depth values outside this range are ignored for the blob.
    redetect_every: when > 0, after this many consecutive tracked frames the next frame is
        detected afresh (catches a crop that drifted onto another face).
    retrack_shift: a tracked face whose landmarks' box centre lies further than this fraction of
        the region's side from the region's centre (it moved fast) is run once more on the region
        of the new landmarks.
    """

    detection_confidence: float = 0.5
    presence_confidence: float = 0.5
    crop_scale_tracked: float = 1.7
    crop_scale_detected: float = 2.0
    min_crop_px: int = 96
    depth_band_mm: float = 250.0
    depth_min_mm: float = 200.0
    depth_max_mm: float = 3000.0
    redetect_every: int = 0
    retrack_shift: float = 0.08

    def __post_init__(self) -> None:
        for name in ("detection_confidence", "presence_confidence"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.crop_scale_tracked < 1.0 or self.crop_scale_detected < 1.0:
            raise ValueError("crop scales must be at least 1 (the crop must contain the face box)")
        if self.min_crop_px < 16:
            raise ValueError(f"min_crop_px must be at least 16, got {self.min_crop_px}")
        if not 0 < self.depth_min_mm < self.depth_max_mm:
            raise ValueError("need 0 < depth_min_mm < depth_max_mm")
        if self.redetect_every < 0:
            raise ValueError(f"redetect_every must be >= 0, got {self.redetect_every}")
        if not self.retrack_shift > 0:
            raise ValueError(f"retrack_shift must be positive, got {self.retrack_shift}")


def lost_result(width: int, height: int) -> LandmarkResult:
    """The result for a frame without a face: NaN points, `found=False`, ROI = the whole frame."""
    return LandmarkResult(
        points_px=np.full((N_LANDMARKS, 2), np.nan, dtype=np.float32),
        z=np.full((N_LANDMARKS,), np.nan, dtype=np.float32),
        confidence=0.0,
        found=False,
        roi=(0, 0, int(width), int(height)),
        roi_source="none",
    )


def square_roi(center_xy: tuple[float, float], side_px: float) -> tuple[int, int, int, int]:
    """Integer square box (x0, y0, x1, y1) of side `round(side_px)` centred on `center_xy` (pixels)."""
    side = max(1, int(round(side_px)))
    x0 = int(round(center_xy[0] - side / 2.0))
    y0 = int(round(center_xy[1] - side / 2.0))
    return (x0, y0, x0 + side, y0 + side)


def _outside(roi: tuple[int, int, int, int], image: np.ndarray) -> bool:
    """Whether the box (x0, y0, x1, y1) misses the (H, W, ...) image entirely."""
    x0, y0, x1, y1 = roi
    height, width = image.shape[:2]
    return x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height


def crop_padded(image: np.ndarray, roi: tuple[int, int, int, int]) -> np.ndarray:
    """Copy of `image[y0:y1, x0:x1]` (H, W, C) where parts outside the image are black (zeros)."""
    x0, y0, x1, y1 = roi
    h, w = image.shape[:2]
    out = np.zeros((y1 - y0, x1 - x0) + image.shape[2:], dtype=image.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


def nearest_depth_blob(
    depth_mm: np.ndarray,
    band_mm: float = 250.0,
    min_mm: float = 200.0,
    max_mm: float = 3000.0,
    min_pixels: int = 400,
) -> tuple[int, int, int, int] | None:
    """Bounding box (x0, y0, x1, y1) of the connected blob nearest to the camera, or None.

    depth_mm: (H, W) uint16 millimetres, 0 = no measurement. The blob is the largest connected
    region (on a 4× decimated grid) of pixels within `band_mm` behind the nearest surface, where the
    nearest surface is the 0.2th percentile of valid depths (robust to flying pixels). A face in
    front of a capture rig is the nearest object; the box is a generous ROI, not a face box.
    """
    from scipy import ndimage

    step = 4
    small = depth_mm[::step, ::step].astype(np.float32)
    valid = (small >= min_mm) & (small <= max_mm)
    if int(valid.sum()) * step * step < min_pixels:
        return None
    near = float(np.percentile(small[valid], 0.2))
    mask = valid & (small <= near + band_mm)
    labels, n = ndimage.label(mask)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    best = int(np.argmax(sizes)) + 1
    if sizes[best - 1] * step * step < min_pixels:
        return None
    ys, xs = np.nonzero(labels == best)
    return (int(xs.min()) * step, int(ys.min()) * step, (int(xs.max()) + 1) * step, (int(ys.max()) + 1) * step)


class FaceLandmarker:
    """Per-camera FaceMesh landmarker with detection, depth-blob and tracked ROIs.

    One instance per camera stream (it keeps the previous frame's landmarks). Not thread-safe.
    Use as a context manager or call `close()` to free the MediaPipe graphs.
    """

    def __init__(self, config: LandmarkerConfig | None = None):
        from mediapipe.python.solution_base import SolutionBase
        from mediapipe.python.solutions import face_detection, face_mesh

        self.config = config or LandmarkerConfig()
        # The stock FaceMesh wrapper drops the detector's score; the same graph also exposes it.
        self._mesh = SolutionBase(
            binary_graph_path=face_mesh._BINARYPB_FILE_PATH,
            side_inputs={"num_faces": 1, "with_attention": True, "use_prev_landmarks": False},
            calculator_params={
                _FACEMESH_DETECTOR_SCORE_PARAM: self.config.detection_confidence,
                _FACEMESH_PRESENCE_PARAM: self.config.presence_confidence,
            },
            outputs=["multi_face_landmarks", "face_detections"],
        )
        self._detector = face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=self.config.detection_confidence
        )
        self._region_mesh = RoiFaceMesh(self.config.presence_confidence)
        self._previous: np.ndarray | None = None
        self._frames_since_detection = 0
        self._closed = False

    def __enter__(self) -> FaceLandmarker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the MediaPipe graphs; the landmarker cannot be used afterwards."""
        if not self._closed:
            self._mesh.close()
            self._detector.close()
            self._region_mesh.close()
            self._closed = True

    def reset(self) -> None:
        """Forget the tracked face (call between unrelated sequences)."""
        self._previous = None
        self._frames_since_detection = 0

    def process(self, rgb: np.ndarray, depth_mm: np.ndarray | None = None) -> LandmarkResult:
        """Landmarks of the face in one frame.

        rgb: (H, W, 3) uint8 RGB. depth_mm: optional (H, W) uint16 depth in millimetres registered
        to this colour camera (0 = no measurement), used to find the face before the first
        detection. Returns a `LandmarkResult` (`found=False` with NaN points when no face).
        """
        if self._closed:
            raise ValueError("FaceLandmarker is closed")
        rgb = self._check_rgb(rgb)
        height, width = rgb.shape[:2]
        if depth_mm is not None:
            depth_mm = np.asarray(depth_mm)
            if depth_mm.shape != (height, width) or depth_mm.dtype != np.uint16:
                raise ValueError(
                    f"depth_mm must be uint16 (H, W) = ({height}, {width}) registered to the colour "
                    f"image, got {depth_mm.dtype} {depth_mm.shape}"
                )

        if self._previous is not None and not self._redetect_due():
            result = self._track(rgb)
            if result is not None:
                return self._keep(result, detected=False)
            logger.debug("tracked face lost; detecting again")

        if depth_mm is not None:
            blob = nearest_depth_blob(
                depth_mm, self.config.depth_band_mm, self.config.depth_min_mm, self.config.depth_max_mm
            )
            if blob is not None:
                x0, y0, x1, y1 = blob
                roi = square_roi(((x0 + x1) / 2.0, (y0 + y1) / 2.0), max(x1 - x0, y1 - y0, self.config.min_crop_px))
                result = self._mesh_on_roi(rgb, roi, "depth")
                if result is not None:
                    return self._keep(result, detected=True)

        roi = self._detect_roi(rgb)
        if roi is not None:
            result = self._mesh_on_roi(rgb, roi, "detector")
            if result is not None:
                return self._keep(result, detected=True)

        self._previous = None
        return lost_result(width, height)

    def track(self, rgb: np.ndarray) -> LandmarkResult | None:
        """Landmarks from the tracked face's region alone: color only, no detection, no depth.

        Returns None when no face is tracked, a periodic re-detection is due, or the face left the
        tracked region (the landmarker then stops tracking): `process(rgb, depth_mm)` on the same
        frame then finds the face as one `process` call would have after its tracked attempt.
        Lets callers that must register depth do so only for a face they cannot track.
        """
        if self._closed:
            raise ValueError("FaceLandmarker is closed")
        rgb = self._check_rgb(rgb)
        if self._previous is None or self._redetect_due():
            return None
        result = self._track(rgb)
        if result is None:
            self._previous = None
            return None
        return self._keep(result, detected=False)

    def _track(self, rgb: np.ndarray) -> LandmarkResult | None:
        """The tracked face in this frame: the landmark model on the previous landmarks' region
        (once more on the new landmarks' region when the face moved far), else the whole FaceMesh
        graph on the tracked crop; None when neither finds it."""
        previous = self._previous
        tracked = region_from_landmarks(previous)
        result = self._mesh_on_region(rgb, tracked)
        if result is not None:
            region = region_from_landmarks(result.points_px[:468])
            moved = math.dist(region.center_px, tracked.center_px)
            if moved <= self.config.retrack_shift * region.side_px:
                return result
            return self._mesh_on_region(rgb, region) or result
        return self._mesh_on_roi(rgb, self._tracked_roi(previous), "tracked")

    def _redetect_due(self) -> bool:
        every = self.config.redetect_every
        return every > 0 and self._frames_since_detection >= every

    @staticmethod
    def _check_rgb(rgb: np.ndarray) -> np.ndarray:
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"rgb must be a uint8 (H, W, 3) image, got {rgb.dtype} {rgb.shape}")
        return rgb

    def _keep(self, result: LandmarkResult, detected: bool) -> LandmarkResult:
        self._previous = result.points_px[:468]
        self._frames_since_detection = 0 if detected else self._frames_since_detection + 1
        return result

    def _tracked_roi(self, points_px: np.ndarray) -> tuple[int, int, int, int]:
        lo = points_px.min(axis=0)
        hi = points_px.max(axis=0)
        side = max(float((hi - lo).max()) * self.config.crop_scale_tracked, self.config.min_crop_px)
        return square_roi(((lo[0] + hi[0]) / 2.0, (lo[1] + hi[1]) / 2.0), side)

    def _detect_roi(self, rgb: np.ndarray) -> tuple[int, int, int, int] | None:
        height, width = rgb.shape[:2]
        detections = self._detector.process(rgb).detections
        if not detections:
            return None
        best = max(detections, key=lambda d: d.score[0])
        box = best.location_data.relative_bounding_box
        w_px, h_px = box.width * width, box.height * height
        center = ((box.xmin + box.width / 2.0) * width, (box.ymin + box.height / 2.0) * height)
        side = max(max(w_px, h_px) * self.config.crop_scale_detected, self.config.min_crop_px)
        return square_roi(center, side)

    def _mesh_on_region(self, rgb: np.ndarray, region: FaceRegion) -> LandmarkResult | None:
        """The landmark model alone on `region`, run on the crop that holds the turned square."""
        turn = abs(math.cos(region.rotation_rad)) + abs(math.sin(region.rotation_rad))
        roi = square_roi(region.center_px, max(region.side_px * turn, self.config.min_crop_px))
        if _outside(roi, rgb):
            return None
        out = self._region_mesh.process(crop_padded(rgb, roi), region, roi[:2])
        if out is None:
            return None
        return self._result(out.xyz, roi, out.presence, "tracked")

    def _mesh_on_roi(self, rgb: np.ndarray, roi: tuple[int, int, int, int], source: str) -> LandmarkResult | None:
        if _outside(roi, rgb):
            return None
        crop = crop_padded(rgb, roi)
        out = self._mesh.process(input_data={"image": crop})
        if not out.multi_face_landmarks:
            return None
        lm = out.multi_face_landmarks[0].landmark
        xyz = np.array([(p.x, p.y, p.z) for p in lm], dtype=np.float64)
        score = 0.0
        if out.face_detections:
            score = float(max(d.score[0] for d in out.face_detections))
        return self._result(xyz, roi, score, source)

    @staticmethod
    def _result(xyz: np.ndarray, roi: tuple[int, int, int, int], score: float, source: str) -> LandmarkResult:
        """A found face from FaceMesh's (478, 3) normalised output on the crop `roi`."""
        x0, y0, x1, y1 = roi
        side_x, side_y = float(x1 - x0), float(y1 - y0)
        if xyz.shape[0] != N_LANDMARKS:
            raise RuntimeError(f"FaceMesh returned {xyz.shape[0]} landmarks, expected {N_LANDMARKS}")
        # MediaPipe's normalised coordinates put pixel centres at (i + 0.5) / size.
        points = np.empty((N_LANDMARKS, 2), dtype=np.float32)
        points[:, 0] = xyz[:, 0] * side_x + x0 - 0.5
        points[:, 1] = xyz[:, 1] * side_y + y0 - 0.5
        z = (xyz[:, 2] * side_x).astype(np.float32)
        return LandmarkResult(points, z, score, True, (int(x0), int(y0), int(x1), int(y1)), source)
