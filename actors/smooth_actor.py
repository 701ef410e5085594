"""SmoothActor: `SmoothStage` (causal Butterworth on the vertices) as an actor, with checkpoints."""

from __future__ import annotations

import dataclasses

from actors.base import StageActor
from actors.records import MeshPacket
from mmface4d_stream.pipeline.stage_config import SmoothStageConfig


class SmoothActor(StageActor):
    """Filters each mesh causally; adds its state to the packets that carry a checkpoint, and
    `restore` continues from one after a restart. config: the smooth stage's settings; fps: the
    meshes' frame rate."""

    fault_stage = "smoother"

    def open(self, config: SmoothStageConfig | None = None, fps: float | None = None,
             fault: dict | None = None) -> bool:
        """Start another sequence (the constructor's arguments): a fresh filter."""
        from mmface4d_stream.formats.sequence import DATASET_FPS

        self.config = config or SmoothStageConfig()
        self.fps = float(DATASET_FPS if fps is None else fps)
        self.stage = self.config.build(self.fps)
        self.fault = fault
        return True

    def smooth(self, packet):
        if not isinstance(packet, MeshPacket):
            return packet
        self.inject_fault(packet.mesh.seq, packet.mesh.frame)
        packet = dataclasses.replace(packet, mesh=self.stage.process(packet.mesh))
        if packet.checkpoint is not None:
            packet.checkpoint = dataclasses.replace(packet.checkpoint, smoother=self.stage.state())
        return packet

    def restore(self, state: dict | None) -> bool:
        """Continue from a checkpoint's smoother state (None: from the start of the stream)."""
        self.stage = self.config.build(self.fps)
        if state is not None:
            self.stage.restore(state)
        return True
