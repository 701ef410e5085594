"""Fitter: `FitStage` (the warm-started face fitter) as an actor, with checkpoints for restarts."""

from __future__ import annotations

import numpy as np

from actors.records import MeshPacket, inject_fault
from mmface4d_stream.types import ObservedFrame


class Fitter:
    """Fits each observed frame; every `checkpoint_every` frames the packet carries the stream state
    to the driver, so a restarted actor continues where the stream was (`restore`).

    rig_transforms: per camera 4x4 T_ref_from_cam as nested lists (None: one camera, or not known
    yet: the graph starts the actor while the rig is being calibrated and then calls `set_rig`).
    options: `graphs.config.FitterConfig` as a dict.
    """

    def __init__(self, rig_transforms: list | None, options: dict, checkpoint_every: int = 15,
                 fault: dict | None = None):
        self._model_key = self._model = None
        self.open(rig_transforms, options, checkpoint_every, fault)

    def open(self, rig_transforms: list | None, options: dict, checkpoint_every: int = 15,
             fault: dict | None = None) -> bool:
        """Start another sequence (the constructor's arguments) with a fresh stream; a loaded face
        model is kept when the model options are the same (a template model is per subject: rebuilt)."""
        import torch

        torch.set_num_threads(int(options.get("torch_threads", 1)))
        self.rig_transforms = rig_transforms
        self.options = options
        self.checkpoint_every = int(checkpoint_every)
        self.fault = fault
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
        return FitStage(transforms, model=model, device=self.options.get("device", "cpu"))

    def set_rig(self, rig_transforms: list | None) -> bool:
        """Use these extrinsics (per camera 4x4 T_ref_from_cam, None: one camera): a fresh stream."""
        self.rig_transforms = rig_transforms
        self.stage = self._new_stage()  # the face model is cached: only the stream state is new
        return True

    def fit(self, observed):
        if not isinstance(observed, ObservedFrame):
            return observed
        inject_fault(self.fault, "fitter", observed.seq, observed.frame)
        mesh = self.stage.process(observed)
        faces = None
        if not self._sent_faces and self.stage.faces is not None:
            faces, self._sent_faces = self.stage.faces, True
        checkpoint = None if mesh.frame % self.checkpoint_every else {"fitter": self.stage.state()}
        return MeshPacket(mesh, faces, checkpoint)

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
