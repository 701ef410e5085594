"""Thin Ray actors around the library stages (no algorithms here).

Each class is a plain Python class; `graphs/` makes it a Ray actor (`ray.remote(cls).options(...)`)
with its CPU share and restart policy. Methods take and return the small records of
`mmface4d_stream.frame_records` plus the markers of `actors.records` (end of stream: None; a dropped frame:
`Dropped`), and pass markers they do not handle straight through, so one graph serves both policies.
Each per-sequence actor is a `base.StageActor` (`open`, `ping`, the faults test aid) and receives
its stage's typed config (`mmface4d_stream.pipeline.stage_config`); both fitter actors keep a
sequence's fitting in a `fit_stream.FitStream`.
"""

from actors.fit_actor import FitActor
from actors.front_actor import FrontActor
from actors.landmark_actor import LandmarkActor
from actors.nut_actor import NutActor
from actors.publish_actor import PublishActor
from actors.records import Checkpoint, Dropped, FrameReport, MeshPacket
from actors.shared_fit_actor import SharedFitActor, StreamLost
from actors.sink_actor import SinkActor
from actors.smooth_actor import SmoothActor
from actors.source_actor import SourceActor

__all__ = ["SourceActor", "FrontActor", "LandmarkActor", "FitActor", "SharedFitActor", "StreamLost", "SmoothActor", "NutActor",
           "PublishActor", "SinkActor", "Checkpoint", "Dropped", "FrameReport", "MeshPacket"]
