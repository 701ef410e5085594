"""Fitter: `FitStage` (the warm-started face fitter) as an actor, with checkpoints for restarts."""

from __future__ import annotations

import numpy as np

from actors.join import join_parts
from actors.latency_gate import StaleFrameGate
from actors.records import fitted_packet, inject_fault
from mmface4d_stream.types import ObservedFrame


class Fitter:
    """Fits each observed frame; every `checkpoint_every` frames the packet carries the stream state
    to the driver, so a restarted actor continues where the stream was (`restore`).

    rig_transforms: per camera 4x4 T_ref_from_cam as nested lists (None: one camera, or not known
    yet: the graph starts the actor while the rig is being calibrated and then calls `set_rig`).
    options: `graphs.config.FitterConfig` as a dict. max_latency_ms (live policy): a frame that
    would leave the fitter later than this after its capture is dropped (`Dropped`, cause
    fitter_busy). `fit` takes the per-camera landmark actors' parts of a frame and joins them.
    """

    def __init__(self, rig_transforms: list | None, options: dict, checkpoint_every: int = 15,
                 fault: dict | None = None, max_latency_ms: float | None = None):
        self._model_key = self._model = None
        self.open(rig_transforms, options, checkpoint_every, fault, max_latency_ms)

    def open(self, rig_transforms: list | None, options: dict, checkpoint_every: int = 15,
             fault: dict | None = None, max_latency_ms: float | None = None) -> bool:
        """Start another sequence (the constructor's arguments) with a fresh stream; a loaded face
        model is kept when the model options are the same (a template model is per subject: rebuilt)."""
        import torch

        torch.set_num_threads(int(options.get("torch_threads", 1)))
        self.rig_transforms = rig_transforms
        self.options = options
        self.checkpoint_every = int(checkpoint_every)
        self.fault = fault
        self.gate = StaleFrameGate("fitter", "fitter_busy", max_latency_ms, expect_own_time=True)
        self.stage = self._new_stage()
        self._sent_faces = False
        return True

    def _new_stage(self):
        from mmface4d_stream.pipeline.run import ReconstructOptions, load_face_model
        from mmface4d_stream.pipeline.stages import FitStage

        key = tuple(self.options.get(k) for k in ("face_model", "bfm_folder", "landmark_mapping"))
        if key != self._model_key:
            self._model = load_face_model(ReconstructOptions(face_model=key[0] or "template", bfm_folder=key[1],
                                                             landmark_mapping=key[2]))
            self._model_key = key
        model = self._model
        transforms = None if self.rig_transforms is None else [np.asarray(t) for t in self.rig_transforms]
        from mmface4d_stream.fit.fitter_config import FitterConfig

        return FitStage(transforms, model=model, config=FitterConfig(raster=self.options.get("raster") or "off"),
                        device=self.options.get("device", "cpu"))

    def set_rig(self, rig_transforms: list | None) -> bool:
        """Use these extrinsics (per camera 4x4 T_ref_from_cam, None: one camera): a fresh stream."""
        self.rig_transforms = rig_transforms
        self.stage = self._new_stage()  # the face model is cached: only the stream state is new
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
        dropped = self.gate.check(observed.seq, observed.frame, observed.t_source_ns)
        if dropped is not None:
            return dropped
        inject_fault(self.fault, "fitter", observed.seq, observed.frame)
        mesh = self.stage.process(observed)
        self.gate.observe(mesh.timings_ms.get("fit", 0.0))
        packet = fitted_packet(self.stage, mesh, not self._sent_faces, self.checkpoint_every)
        self._sent_faces |= packet.faces is not None
        return packet

    def restore(self, state: dict | None) -> bool:
        """Continue from a checkpoint (None: from the start of the stream)."""
        self.stage = self._new_stage()
        if state is not None:
            self.stage.restore(state)
        self._sent_faces = False
        return True

    def summary(self) -> dict:
        return self.stage.summary()

    def faces(self):
        return self.stage.faces

    def ping(self) -> bool:
        return True
