"""Smoother: `SmoothStage` (causal Butterworth on the vertices) as an actor, with checkpoints."""

from __future__ import annotations

import dataclasses

from actors.records import MeshPacket, inject_fault
from mmface4d_stream.pipeline.stages import SmoothStage


class Smoother:
    """Filters each mesh causally; adds its state to the packets that carry a checkpoint, and
    `restore` continues from one after a restart."""

    def __init__(self, cutoff_hz: float = 5.0, order: int = 5, fps: float = 30.0, fault: dict | None = None):
        self.open(cutoff_hz, order, fps, fault)

    def open(self, cutoff_hz: float = 5.0, order: int = 5, fps: float = 30.0, fault: dict | None = None) -> bool:
        """Start another sequence (the constructor's arguments): a fresh filter."""
        self.design = {"cutoff_hz": cutoff_hz, "order": order, "fps": fps}
        self.stage = SmoothStage(**self.design)
        self.fault = fault
        return True

    def smooth(self, packet):
        if not isinstance(packet, MeshPacket):
            return packet
        inject_fault(self.fault, "smoother", packet.mesh.seq, packet.mesh.frame)
        packet = dataclasses.replace(packet, mesh=self.stage.process(packet.mesh))
        if packet.checkpoint is not None:
            packet.checkpoint = dict(packet.checkpoint, smoother=self.stage.state())
        return packet

    def restore(self, state: dict | None) -> bool:
        self.stage = SmoothStage(**self.design)
        if state is not None:
            self.stage.restore(state)
        return True

    def ping(self) -> bool:
        return True
