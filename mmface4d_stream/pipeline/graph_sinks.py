"""Sinks for graphs that may drop frames: frame-numbered mesh files and drop-counting publishers.

`IndexedMeshNutSink` keeps file frame i = capture frame i when frames are dropped (live policy):
the gap repeats the last mesh and is counted. `CountingPublishSink` adds drop counts to the
status reports. Both extend the sinks of `pipeline.sinks` without changing them.
"""

from __future__ import annotations

import numpy as np

from mmface4d_stream.pipeline.sinks import MeshNutSink, PublishSink
from mmface4d_stream.frame_records import MeshFrame


class IndexedMeshNutSink(MeshNutSink):
    """`MeshNutSink` plus `fill_to(frame)`: account for dropped frames before `frame`."""

    def __init__(self, save_path, fps: int = 30):
        super().__init__(save_path, fps=fps)
        self.frames_filled = 0
        self._last_vertices: np.ndarray | None = None

    def process(self, mesh: MeshFrame) -> MeshFrame:
        written = self.frames_written
        result = super().process(mesh)
        if self.frames_written > written:
            self._last_vertices = mesh.vertices
        return result

    def fill_to(self, frame: int) -> int:
        """Repeat the last mesh for frames dropped before `frame`; returns how many were filled."""
        gap = int(frame) - self.frames_accounted
        if gap <= 0:
            return 0
        if self._last_vertices is None:
            self.pending_before_first += gap
        else:
            for _ in range(gap):
                self.writer.write(self._last_vertices)
            self.frames_written += gap
        self.frames_filled += gap
        return gap

    def close(self, faces=None, meta: dict | None = None, success: bool = True) -> None:
        if meta is not None:
            meta = dict(meta, frames_filled=self.frames_filled)
        super().close(faces=faces, meta=meta, success=success)


class CountingPublishSink(PublishSink):
    """`PublishSink` that also reports dropped frames per stage in its 1 Hz status and, given a
    `LatencyBudget` (`budget`, live graphs), the budget and the graph's `state` with it."""

    budget = None
    state: str | None = None

    def record_drop(self, stage: str, n: int = 1) -> None:
        self.meter(stage).drop(n)

    def status_extra(self) -> dict:
        extra = {} if self.state is None else {"state": self.state}
        if self.budget is not None:
            extra["budget"] = self.budget.report()
        return extra

    def announce(self, state: str) -> None:
        """Publish a status at once saying the graph is in `state` ("ready": warm, the clock starts)."""
        self.state = state
        self.publish_status(force=True)
