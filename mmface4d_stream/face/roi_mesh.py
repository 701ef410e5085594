"""FaceMesh's landmark model on a known face region, with no face detector.

`FaceLandmarker` tracks a face from frame to frame. Its first frame (and every frame after a loss)
runs the full FaceMesh graph, whose short-range detector finds the face inside the crop. A tracked
frame already knows where the face is, from the previous frame's landmarks, so it runs only
MediaPipe's registered `FaceLandmarkCpu` subgraph on that region: the 192×192 landmark model (with
attention: 478 points) and its face-presence score. This is MediaPipe's own tracking rule, and it
costs about two thirds of a detector-plus-landmarks run on this machine.

The region follows MediaPipe's rule for turning landmarks into the next frame's region
(`region_from_landmarks`): the square on the long side of the landmarks' bounding box, 1.5 times as
large, turned so that the line between the outer eye corners (points 33 and 263) is horizontal.

Models come from the installed mediapipe package; nothing is downloaded.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

REGION_SCALE = 1.5
"""Region side / long side of the landmarks' bounding box (MediaPipe's tracking margin)."""
EYE_CORNERS = (33, 263)
"""FaceMesh points whose line sets the region's rotation (outer corners of the two eyes)."""

_GRAPH = """
input_stream: "image"
input_stream: "roi"
output_stream: "face_landmarks"
node {
  calculator: "FaceLandmarkCpu"
  input_stream: "IMAGE:image"
  input_stream: "ROI:roi"
  input_side_packet: "WITH_ATTENTION:with_attention"
  output_stream: "LANDMARKS:face_landmarks"
}
"""


class FaceRegion(NamedTuple):
    """A rotated square around a face in image pixels (pixel centres at integer coordinates).

    center_px: (x, y) centre. side_px: side length. rotation_rad: counter-clockwise turn of the
    face in the image (MediaPipe's `NormalizedRect.rotation`), in radians in [-pi, pi).
    """

    center_px: tuple[float, float]
    side_px: float
    rotation_rad: float


class RegionLandmarks(NamedTuple):
    """The landmark model's output on one region.

    xyz: (478, 3) float64: x, y normalised to the image the model ran on (pixel centres at
    (i + 0.5) / size), z relative depth in the same units as x (smaller is closer).
    presence: face-presence score in [0, 1].
    """

    xyz: np.ndarray
    presence: float


def region_from_landmarks(points_px: np.ndarray) -> FaceRegion:
    """The next frame's face region from this frame's landmarks.

    points_px: (N >= 264, 2) landmark pixels, FaceMesh order (finite). The region is the square on
    the long side of their bounding box times `REGION_SCALE`, centred on the box, turned so that the
    line between `EYE_CORNERS` is horizontal.
    """
    points = np.asarray(points_px, dtype=np.float64)
    lo = points.min(axis=0)
    hi = points.max(axis=0)
    start, end = points[EYE_CORNERS[0]], points[EYE_CORNERS[1]]
    rotation = math.atan2(-(end[1] - start[1]), end[0] - start[0])
    rotation = -rotation  # the turn that makes the eye line horizontal (target angle 0)
    rotation -= 2.0 * math.pi * math.floor((rotation + math.pi) / (2.0 * math.pi))
    side = float((hi - lo).max()) * REGION_SCALE
    return FaceRegion((float(lo[0] + hi[0]) / 2.0, float(lo[1] + hi[1]) / 2.0), side, rotation)


class RoiFaceMesh:
    """MediaPipe's `FaceLandmarkCpu` subgraph (landmark model with attention, no detector).

    presence_confidence: face-presence score below which no landmarks are returned.
    Not thread-safe; call `close()` (or use as a context manager) to free the MediaPipe graph.
    """

    def __init__(self, presence_confidence: float = 0.5):
        import os

        import mediapipe as mp
        from google.protobuf import text_format
        from mediapipe.calculators.util import thresholding_calculator_pb2
        from mediapipe.framework import calculator_pb2
        from mediapipe.python._framework_bindings import resource_util

        # Model paths in the subgraph are relative to the directory above the mediapipe package.
        resource_util.set_resource_dir(os.path.dirname(os.path.dirname(mp.__file__)))
        validated = mp.ValidatedGraphConfig()
        validated.initialize(graph_config=text_format.Parse(_GRAPH, calculator_pb2.CalculatorGraphConfig()))
        config = calculator_pb2.CalculatorGraphConfig()
        config.ParseFromString(validated.binary_config)
        thresholds = [node for node in config.node if node.calculator == "ThresholdingCalculator"]
        if len(thresholds) != 1:
            raise RuntimeError(f"unexpected FaceLandmarkCpu graph: {len(thresholds)} thresholding nodes")
        options = thresholds[0].options.Extensions[thresholding_calculator_pb2.ThresholdingCalculatorOptions.ext]
        options.threshold = float(presence_confidence)
        presence_stream = thresholds[0].input_stream[0].split(":")[-1]
        config.output_stream.append(presence_stream)

        self._outputs: dict[str, object] = {}
        self._graph = mp.CalculatorGraph(graph_config=config)
        getters = {"face_landmarks": mp.packet_getter.get_proto, presence_stream: mp.packet_getter.get_float}
        for stream, getter in getters.items():
            self._graph.observe_output_stream(stream, self._observer(getter), True)
        self._presence_stream = presence_stream
        self._graph.start_run({"with_attention": mp.packet_creator.create_bool(True)})
        self._timestamp = 0
        self._mp = mp

    def _observer(self, get):
        """An output-stream callback that keeps a packet's content (empty packets mark a timestamp
        with no output, e.g. no landmarks for a region without a face)."""

        def keep(stream: str, packet) -> None:
            if not packet.is_empty():
                self._outputs[stream] = get(packet)

        return keep

    def __enter__(self) -> RoiFaceMesh:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the MediaPipe graph (idempotent)."""
        if self._graph is not None:
            self._graph.close()
            self._graph = None

    def process(self, image: np.ndarray, region: FaceRegion, offset_px: tuple[int, int] = (0, 0)) -> RegionLandmarks | None:
        """Landmarks of the face in `region`, or None when the presence score is below the threshold.

        image: (H, W, 3) uint8 RGB, C-contiguous (typically a crop of the frame). region: in the
        pixels of the frame the crop came from; offset_px: the crop's top-left pixel in that frame.
        """
        from mediapipe.framework.formats import rect_pb2

        if self._graph is None:
            raise ValueError("RoiFaceMesh is closed")
        height, width = image.shape[:2]
        (cx, cy), side = region.center_px, region.side_px
        rect = rect_pb2.NormalizedRect(
            x_center=(cx - offset_px[0] + 0.5) / width,
            y_center=(cy - offset_px[1] + 0.5) / height,
            width=side / width,
            height=side / height,
            rotation=region.rotation_rad,
        )
        mp = self._mp
        self._timestamp += 33333  # microseconds; the graph needs increasing timestamps
        self._outputs.clear()
        frame = mp.packet_creator.create_image_frame(image_format=mp.ImageFormat.SRGB, data=image)
        self._graph.add_packet_to_input_stream("image", frame.at(self._timestamp))
        self._graph.add_packet_to_input_stream("roi", mp.packet_creator.create_proto(rect).at(self._timestamp))
        self._graph.wait_until_idle()
        landmarks = self._outputs.get("face_landmarks")
        if landmarks is None:
            return None
        xyz = np.array([(p.x, p.y, p.z) for p in landmarks.landmark], dtype=np.float64)
        return RegionLandmarks(xyz, float(self._outputs.get(self._presence_stream, 0.0)))
