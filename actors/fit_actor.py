"""FitActor: `FitStage` (the warm-started face fitter) as an actor, with checkpoints for restarts."""

from __future__ import annotations

from actors.base import StageActor
from actors.fit_stream import FitStream, fitter_gate
from actors.join import join_parts
from mmface4d_stream.pipeline.stage_config import FitStageConfig
from mmface4d_stream.frame_records import ObservedFrame


class FitActor(StageActor):
    """Fits each observed frame; every `checkpoint_every` frames the packet carries the stream state
    to the driver, so a restarted actor continues where the stream was (`restore`).

    rig_transforms: per camera 4x4 T_ref_from_cam as nested lists (None: one camera, or not known
    yet: the graph starts the actor while the rig is being calibrated and then calls `set_rig`).
    config: the fit stage's settings. max_latency_ms (live policy): a frame that would leave the
    fitter later than this after its capture is dropped (`Dropped`, cause fitter_busy);
    hurry_after_ms (live policy): one older than this when it arrives is fitted the fast way. `fit`
    takes the per-camera landmark actors' parts of a frame and joins them.
    """

    def setup(self) -> None:
        self._model_key = self._model = None

    def open(self, rig_transforms: list | None, config: FitStageConfig, checkpoint_every: int = 15,
             fault: dict | None = None, max_latency_ms: float | None = None,
             hurry_after_ms: float | None = None) -> bool:
        """Start another sequence (the constructor's arguments) with a fresh stream; a loaded face
        model is kept when the model settings are the same (a template model is per subject: rebuilt)."""
        config.set_torch_threads()
        self.rig_transforms = rig_transforms
        self.config = config
        self.checkpoint_every = int(checkpoint_every)
        self.fault = fault
        self.gate = fitter_gate(max_latency_ms)
        self.hurry_after_ms = hurry_after_ms
        self._new_stream()
        return True

    def _new_stream(self) -> None:
        if self.config.model_key != self._model_key:
            self._model = self.config.load_model()
            self._model_key = self.config.model_key
        stage = self.config.build(self.rig_transforms, model=self._model)
        self.stream = FitStream(stage, self.checkpoint_every, self.fault, self.gate, self.hurry_after_ms)

    @property
    def stage(self):
        """The sequence's `FitStage`."""
        return self.stream.stage

    def set_rig(self, rig_transforms: list | None) -> bool:
        """Use these extrinsics (per camera 4x4 T_ref_from_cam, None: one camera): a fresh stream."""
        self.rig_transforms = rig_transforms
        self._new_stream()  # the face model is cached: only the stream state is new
        return True

    def warm_up(self, *parts) -> dict:
        """Fit a pre-roll frame (the per-camera parts of its observation) before the capture clock
        starts: torch's first calls, the model pack and, for the template, the subject's model are
        done now. The stream keeps that fit as its warm start; its counters start at zero, so the
        pre-roll is not a frame of the sequence. Returns {"seconds", "lost"}."""
        observed = join_parts(parts)
        if not isinstance(observed, ObservedFrame):
            return {"seconds": 0.0, "lost": None}
        return self.stage.warm_up(observed)

    def fit(self, *parts):
        observed = join_parts(parts)
        if not isinstance(observed, ObservedFrame):
            return observed
        dropped = self.stream.admit(observed)
        if dropped is not None:
            return dropped
        self.stream.inject_fault(observed)
        return self.stream.packet(self.stage.process(observed))

    def restore(self, state: dict | None) -> bool:
        """Continue from a checkpoint's fitter state (None: from the start of the stream)."""
        self._new_stream()
        if state is not None:
            self.stage.restore(state)
        return True

    def summary(self) -> dict:
        return self.stage.summary()

    def faces(self):
        return self.stage.faces
