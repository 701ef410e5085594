"""NutActor: `MeshNutSink` as an actor: the sequence's mesh nut triplet, one frame per capture frame."""

from __future__ import annotations

import time

from actors.base import StageActor
from actors.records import Dropped, FrameReport, latency_ms_since
from mmface4d_stream.errors import StageError
from mmface4d_stream.formats.sequence import DATASET_FPS


class NutActor(StageActor):
    """Writes meshes in frame order; a gap in the frame numbers (dropped frames) repeats the previous
    mesh so file frame i stays capture frame i. Frames below the next expected number (re-run after
    a restart) are ignored. With `write=False` only reports are produced (publish-only graphs).
    allow_gaps=False (offline policy): a gap is an error instead (an earlier stage failed on it)."""

    fault_stage = "encoder"

    def setup(self) -> None:
        self.closed = True

    def open(self, save_path: str, fps: int = DATASET_FPS, write: bool = True, allow_gaps: bool = True,
             fault: dict | None = None) -> bool:
        """Write another sequence (the constructor's arguments). The previous one must be closed."""
        from mmface4d_stream.pipeline.graph_sinks import IndexedMeshNutSink

        if not self.closed:
            raise RuntimeError(f"{self.save_path}: still open; close() it before opening {save_path}")
        self.save_path = save_path
        self.sink = IndexedMeshNutSink(save_path, fps=fps) if write else None
        self.next_frame = 0
        self.faces = None
        self.dropped: list[int] = []
        self.allow_gaps = allow_gaps
        self.fault = fault
        self.closed = False
        return True

    def write(self, packet) -> FrameReport | None:
        if packet is None:
            return None
        if isinstance(packet, Dropped):
            self.dropped.append(packet.frame)
            return FrameReport(packet.seq, packet.frame, "dropped", cause=packet.cause)
        mesh = packet.mesh
        if mesh.frame < self.next_frame:
            return FrameReport(mesh.seq, mesh.frame, "replayed", checkpoint=packet.checkpoint)
        self.inject_fault(mesh.seq, mesh.frame)
        start = time.perf_counter()
        if packet.faces is not None:
            self.faces = packet.faces
        filled = mesh.frame - self.next_frame
        if filled and not self.allow_gaps:
            # Offline nothing is dropped: a missing frame means an earlier stage failed on it.
            raise StageError("encoder", mesh.seq, mesh.frame, None,
                             f"frames {self.next_frame}..{mesh.frame - 1} never arrived (offline policy drops nothing)")
        if self.sink is not None:
            self.sink.fill_to(mesh.frame)
            self.sink.process(mesh)
        self.next_frame = mesh.frame + 1
        timings = dict(mesh.timings_ms, encode=(time.perf_counter() - start) * 1e3)
        return FrameReport(mesh.seq, mesh.frame, "lost" if mesh.lost else "mesh", filled,
                           latency_ms_since(mesh.t_source_ns), timings, packet.checkpoint,
                           t_source_ns=mesh.t_source_ns, hurried="hurried" in mesh.flags)

    def fill_to(self, frames_total: int) -> int:
        """Live end of stream: account for captured frames after the last mesh (dropped ones)."""
        if self.sink is None or frames_total <= self.next_frame:
            return 0
        filled = self.sink.fill_to(frames_total)
        self.next_frame = frames_total
        return filled

    def close(self, faces=None, meta: dict | None = None, success: bool = True) -> dict:
        """Finalize the files (always decodable); the meta json only when `success`. Returns counts."""
        if self.closed:
            return {}
        self.closed = True
        counts = {"frames_out": self.next_frame}
        if self.sink is not None:
            self.sink.close(faces=faces if faces is not None else self.faces, meta=meta, success=success)
            counts.update(frames_written=self.sink.frames_written, frames_filled=self.sink.frames_filled,
                          frames_never_fitted=self.sink.pending_before_first)
        return counts

    def __del__(self):
        # An actor torn down without close() (driver killed) still finalizes its files.
        if not getattr(self, "closed", True) and getattr(self, "sink", None) is not None:
            try:
                self.sink.abort()
            except Exception:
                pass
