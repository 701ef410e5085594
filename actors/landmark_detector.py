"""LandmarkDetector: `LandmarkStage` as an actor (full frames in, face crops out)."""

from __future__ import annotations

import time

from actors.records import Dropped, inject_fault
from mmface4d_stream.pipeline.stages import LandmarkStage
from mmface4d_stream.types import FrameSet


class LandmarkDetector:
    """Landmarks + crop for every camera of a frame set. max_latency_ms (live policy): a frame set
    older than this when it arrives is dropped here (`Dropped`), before any work is spent on it."""

    def __init__(self, n_cameras: int, thumbnails: bool = False, max_latency_ms: float | None = None,
                 fault: dict | None = None):
        self._stage = None
        self.open(n_cameras, thumbnails, max_latency_ms, fault)

    def open(self, n_cameras: int, thumbnails: bool = False, max_latency_ms: float | None = None,
             fault: dict | None = None) -> bool:
        """Start another sequence (the constructor's arguments): tracked faces are forgotten; the
        MediaPipe graphs are kept when the camera count and settings are the same."""
        if self._stage is not None and (n_cameras, thumbnails) != (self.n_cameras, self.thumbnails):
            self.close()
        self.n_cameras, self.thumbnails = n_cameras, thumbnails
        self.max_latency_ms = max_latency_ms
        self.fault = fault
        return self.reset()

    @property
    def stage(self) -> LandmarkStage:
        # Built on first use, in the thread that runs the calls (a compiled graph's loop thread).
        if self._stage is None:
            self._stage = LandmarkStage(self.n_cameras, thumbnails=self.thumbnails)
        return self._stage

    def detect(self, frame_set):
        if not isinstance(frame_set, FrameSet):
            return frame_set
        if self.max_latency_ms is not None and frame_set.t_source_ns:
            age_ms = (time.monotonic_ns() - frame_set.t_source_ns) / 1e6
            if age_ms > self.max_latency_ms:
                return Dropped(frame_set.seq, frame_set.frame, "landmarks", f"{age_ms:.0f} ms old")
        inject_fault(self.fault, "landmarks", frame_set.seq, frame_set.frame)
        return self.stage.process(frame_set)

    def warm_up(self) -> bool:
        """Build the MediaPipe graphs now (plain actor calls run in one thread: the same one later
        calls use), and import the crops' camera model (it brings torch), so the first frame does not
        pay for them."""
        from mmface4d_stream.fit.camera_terms import FitCamera  # noqa: F401

        return self.stage is not None

    def reset(self) -> bool:
        """Forget the tracked face regions (a new sequence, or the stream was rewound)."""
        if self._stage is not None:
            self._stage.reset()
        return True

    def close(self) -> None:
        if self._stage is not None:
            self._stage.close()
            self._stage = None

    def ping(self) -> bool:
        return True
