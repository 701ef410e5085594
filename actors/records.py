"""Markers and small records that flow through the graph besides the library's stage records."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace

import numpy as np

from mmface4d_stream.errors import StageError
from mmface4d_stream.frame_records import MeshFrame


@dataclass
class Dropped:
    """Frame `frame` of `seq` was dropped by `stage` (live policy); later stages pass it on.
    cause: one of `pipeline.latency_budget.DROP_CAUSES` (too_old, fitter_busy)."""

    seq: str
    frame: int
    stage: str
    reason: str
    cause: str = "too_old"


@dataclass
class Checkpoint:
    """The stream state after frame `frame` (-1: before the first, nothing to restore): the fitter's
    `FitStage.state()` and, in a graph with a smoother, its `SmoothStage.state()` (picklable)."""

    frame: int = -1
    fitter: dict | None = None
    smoother: dict | None = None

    @property
    def model(self):
        """The stream's template model in this checkpoint (None: not built yet, a user's model, or
        left out because an earlier checkpoint of the stream carried it)."""
        return None if self.fitter is None else self.fitter["fitter"].get("model")

    def carry_model(self, earlier: Checkpoint) -> Checkpoint:
        """This checkpoint, with the template model of `earlier` (the same stream's previous
        checkpoint) when this one left it out: what a restarted fitter needs to restore."""
        if self.fitter is None or self.model is not None or earlier.model is None or not self.fitter["fitter"]["built_model"]:
            return self
        return replace(self, fitter=dict(self.fitter, fitter=dict(self.fitter["fitter"], model=earlier.model)))


@dataclass
class MeshPacket:
    """A mesh and, when the fitter's topology is new (first frame, after a restore), its triangles (F, 3).

    checkpoint: every `checkpoint_every` frames the stream state after this frame (the smoother
    adds its own); it rides along to the encoder, which hands it to the driver in its report.
    """

    mesh: MeshFrame
    faces: np.ndarray | None = None
    checkpoint: Checkpoint | None = None


def fitted_packet(stage, mesh: MeshFrame, send_faces: bool, checkpoint_every: int, send_model: bool = True) -> MeshPacket:
    """A fitter's packet for `mesh`, fitted by `stage` (a `FitStage`): the stage's triangles when
    `send_faces` and it has them, its state as checkpoint every `checkpoint_every` frames (with the
    template model when `send_model`)."""
    faces = stage.faces if send_faces else None
    checkpoint = None if mesh.frame % checkpoint_every else Checkpoint(mesh.frame, stage.state(with_model=send_model))
    return MeshPacket(mesh, faces, checkpoint)


@dataclass
class FrameReport:
    """What the encoder did with one tick, returned to the driver (small).

    kind: "mesh" (fitted), "lost" (no face: previous mesh repeated), "dropped" or "replayed" (a
    frame re-run after a restart, already written); the source's end reaches the driver as None. filled: frames
    repeated before this one to close a gap of dropped frames. latency_ms: source emit → encoded
    (same host only). timings_ms: per-stage milliseconds of this frame. cause: why a dropped frame
    was dropped. t_source_ns: the source's emit time (host monotonic ns; 0: unknown). hurried: the
    fitter fitted it the fast way (`policy.hurry_after_ms`).
    """

    seq: str
    frame: int
    kind: str
    filled: int = 0
    latency_ms: float | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    checkpoint: Checkpoint | None = None
    cause: str | None = None
    t_source_ns: int = 0
    hurried: bool = False


def latency_ms_since(t_source_ns: int) -> float | None:
    """Milliseconds since a `time.monotonic_ns()` stamp taken on this host (None without one)."""
    return (time.monotonic_ns() - t_source_ns) / 1e6 if t_source_ns else None


def inject_fault(fault: dict | None, stage: str, seq: str, frame: int) -> None:
    """The config's test aid (`faults`): sleep, raise a `StageError`, or kill this process once."""
    if not fault or fault.get("stage") != stage:
        return
    if fault.get("delay_ms"):
        time.sleep(fault["delay_ms"] / 1e3)
    if fault.get("frame") is None or frame != fault["frame"]:
        return
    if fault.get("kind") == "raise":
        raise StageError(stage, seq, frame, None, "RuntimeError: injected failure (faults config)")
    if fault.get("kind") == "exit":
        import ray

        if not ray.get_runtime_context().was_current_actor_reconstructed:
            os._exit(1)
