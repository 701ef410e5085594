"""FitStream: one sequence's fitting inside a fitter actor (per-lane `FitActor` or `SharedFitActor`)."""

from __future__ import annotations

from actors.latency_gate import StaleFrameGate
from actors.records import Dropped, MeshPacket, fitted_packet, inject_fault, latency_ms_since
from mmface4d_stream.frame_records import MeshFrame, ObservedFrame


def fitter_gate(max_latency_ms: float | None) -> StaleFrameGate:
    """The fitter's stale-frame gate (kept by an actor across its stream's restores: its time estimate)."""
    return StaleFrameGate("fitter", "fitter_busy", max_latency_ms, expect_own_time=True)


class FitStream:
    """A `FitStage` with what the graph adds around it, the same in both fitter actors: the live
    policy's stale-frame gate (`fitter_gate`: a frame that would leave the fitter later than
    max_latency_ms after capture is dropped, cause fitter_busy; None: offline, nothing dropped), the
    live policy's hurry (a frame older than `hurry_after_ms` when it reaches the fitter is fitted
    the fast way, `ObservedFrame.hurry`, but never two in a row: the per-vertex offsets still
    follow the face at least every other frame; None: never), the faults config, a checkpoint every
    `checkpoint_every` frames (the template model in the first one that has it: the driver carries
    it over, `Checkpoint.carry_model`) and the triangles sent once per (re)start."""

    def __init__(self, stage, checkpoint_every: int = 15, fault: dict | None = None,
                 gate: StaleFrameGate | None = None, hurry_after_ms: float | None = None):
        self.stage = stage
        self.checkpoint_every = int(checkpoint_every)
        self.fault = fault
        self.gate = gate or fitter_gate(None)
        self.hurry_after_ms = hurry_after_ms
        self.hurried_last = False
        self.sent_faces = False
        self.sent_model = False  # a checkpoint carried the template: later ones leave it out

    def admit(self, observed: ObservedFrame) -> Dropped | None:
        """A `Dropped` marker when `observed` cannot make the latency budget, else None (the frame
        is marked `hurry` when it is older than `hurry_after_ms` and the last frame was not)."""
        dropped = self.gate.check(observed.seq, observed.frame, observed.t_source_ns)
        if dropped is None and self.hurry_after_ms is not None and observed.t_source_ns:
            observed.hurry = not self.hurried_last and latency_ms_since(observed.t_source_ns) > self.hurry_after_ms
            self.hurried_last = observed.hurry
        return dropped

    def inject_fault(self, observed: ObservedFrame) -> None:
        inject_fault(self.fault, "fitter", observed.seq, observed.frame)

    def packet(self, mesh: MeshFrame) -> MeshPacket:
        """The packet of a fitted `mesh` (its time feeds the gate's estimate)."""
        self.gate.observe(mesh.timings_ms.get("fit", 0.0))
        packet = fitted_packet(self.stage, mesh, not self.sent_faces, self.checkpoint_every, not self.sent_model)
        self.sent_faces |= packet.faces is not None
        self.sent_model |= packet.checkpoint is not None and packet.checkpoint.model is not None
        return packet
