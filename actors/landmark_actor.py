"""LandmarkActor: `LandmarkStage` as an actor (full frames in, face crops out), for every camera
of a frame set or for one camera (one actor per camera: the cameras run in parallel)."""

from __future__ import annotations

from actors.base import StageActor
from actors.latency_gate import StaleFrameGate
from mmface4d_stream.pipeline.stage_config import LandmarkStageConfig
from mmface4d_stream.pipeline.stages import LandmarkStage
from mmface4d_stream.frame_records import FrameSet


class LandmarkActor(StageActor):
    """Landmarks + crop for the cameras of a frame set at positions `cameras` (None: all n_cameras).
    config: the landmark stage's settings. color_crops: the crops carry their RGB (the fitter's
    photometric term reads it: `FitStageConfig.needs_color`). max_latency_ms (live policy): a frame set older than
    this when it arrives is dropped here (`Dropped`, cause too_old), before any work is spent on it."""

    fault_stage = "landmarks"

    def setup(self) -> None:
        self._stage = None

    def open(self, n_cameras: int, config: LandmarkStageConfig | None = None, max_latency_ms: float | None = None,
             fault: dict | None = None, cameras: list[int] | None = None, color_crops: bool = False) -> bool:
        """Start another sequence (the constructor's arguments): tracked faces are forgotten; the
        MediaPipe graphs are kept when the cameras and settings are the same."""
        cameras = None if cameras is None else list(cameras)
        config = config or LandmarkStageConfig()
        settings = (n_cameras, config, cameras, bool(color_crops))
        if self._stage is not None and settings != (self.n_cameras, self.config, self.cameras, self.color_crops):
            self.close()
        self.n_cameras, self.config, self.cameras, self.color_crops = settings
        self.gate = StaleFrameGate("landmarks", "too_old", max_latency_ms)
        self.fault = fault
        return self.reset()

    @property
    def stage(self) -> LandmarkStage:
        # Built on first use, in the thread that runs the calls (a compiled graph's loop thread).
        if self._stage is None:
            self._stage = self.config.build(self.n_cameras, self.cameras, self.color_crops)
        return self._stage

    def detect(self, frame_set):
        if not isinstance(frame_set, FrameSet):
            return frame_set
        dropped = self.gate.check(frame_set.seq, frame_set.frame, frame_set.t_source_ns)
        if dropped is not None:
            return dropped
        self.inject_fault(frame_set.seq, frame_set.frame)
        return self.stage.process(frame_set)

    def warm_up(self, frame_set: FrameSet | None = None, build: bool = True):
        """Get ready before the capture clock starts: build the MediaPipe graphs when `build` (plain
        actor calls run in one thread: the same one later calls use; a compiled graph's loop thread
        builds its own) and, given a
        pre-roll `frame_set`, run it through twice (first inference of the full-frame search and of
        the tracking path, the depth registration tables of its cameras). The face found there stays tracked: the first frame after the clock starts is
        taken where the pre-roll left it (a moment earlier), without a full-frame search (which
        falls back to one when the face moved). Returns the pre-roll's `ObservedFrame` (the fitter
        warms on it) or None."""
        if not build:
            return None
        stage = self.stage
        if frame_set is None:
            return None
        # The first pass finds the face (full-frame search); the second runs the tracking path once,
        # whose first call costs ~4× a steady one (measured 45 vs 10 ms): not on the first live frame.
        stage.process(frame_set)
        return stage.process(frame_set)

    def reset(self) -> bool:
        """Forget the tracked face regions (a new sequence, or the stream was rewound)."""
        if self._stage is not None:
            self._stage.reset()
        return True

    def close(self) -> None:
        if self._stage is not None:
            self._stage.close()
            self._stage = None
