"""Thin Ray actors around the library stages (no algorithms here).

Each class is a plain Python class; `graphs/` makes it a Ray actor (`ray.remote(cls).options(...)`)
with its CPU share and restart policy. Methods take and return the small records of
`mmface4d_stream.types` plus the markers of `actors.records` (end of stream: None; a dropped frame:
`Dropped`), and pass markers they do not handle straight through, so one graph serves both policies.
Each per-sequence actor is a `base.StageActor` (`open`, `ping`, the faults test aid) and receives
its stage's typed config (`mmface4d_stream.pipeline.stage_config`); both fitter actors keep a
sequence's fitting in a `fit_stream.FitStream`.
"""

from actors.camera_source import CameraSource
from actors.fitter import Fitter
from actors.landmark_detector import LandmarkDetector
from actors.nut_encoder import NutEncoder
from actors.records import Checkpoint, Dropped, FrameReport, MeshPacket
from actors.shared_fitter import SharedFitter, StreamLost
from actors.smoother import Smoother
from actors.zmq_publisher import ZmqPublisher

__all__ = ["CameraSource", "LandmarkDetector", "Fitter", "SharedFitter", "StreamLost", "Smoother", "NutEncoder",
           "ZmqPublisher", "Checkpoint", "Dropped", "FrameReport", "MeshPacket"]
