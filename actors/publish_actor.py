"""PublishActor: `PublishSink` as an actor: meshes, topology, 1 Hz status and end over ZeroMQ."""

from __future__ import annotations

from actors.base import StageActor
from actors.records import Dropped, latency_ms_since
from mmface4d_stream.pipeline.stage_config import PublishConfig


class PublishActor(StageActor):
    """Publishes every mesh packet (docs/protocol.md). The graph never waits on the socket:
    every subscriber has its own queue (`send_hwm` messages live, `offline_hwm` offline, deep
    enough that a subscriber that keeps up on average loses nothing) and one that stalls or dies
    loses messages alone, never costing the others a frame. Offline only `end` waits, at most
    `send_timeout_s`. Frames below the next expected number (re-run after a restart) are not
    published twice. `curve_public_key`/`curve_secret_key` (Z85) encrypt the stream. With `history`
    > 0 subscribers may ask for the meshes they missed (`stream.repair`), and the status reports
    what each of them lost. The defaults are `PublishConfig`'s, but for `history` (none kept).
    One actor publishes one sequence (a lane starts a new one per sequence)."""

    fault_stage = "publisher"

    def open(self, url: str, drop_when_full: bool = True, send_hwm: int = PublishConfig.send_hwm,
             send_timeout_s: float | None = PublishConfig.send_timeout_s, fault: dict | None = None,
             offline_hwm: int = PublishConfig.offline_hwm, curve_public_key: bytes | None = None,
             curve_secret_key: bytes | None = None, history: int = 0, repair_url: str | None = None) -> bool:
        from mmface4d_stream.pipeline.graph_sinks import CountingPublishSink

        live = drop_when_full
        options = {"send_hwm": send_hwm if live else max(send_hwm, offline_hwm),
                   "end_timeout_s": 1.0 if live or send_timeout_s is None else send_timeout_s,
                   "history": history, "repair_url": repair_url}
        if curve_secret_key is not None:
            options.update(curve_public_key=curve_public_key, curve_secret_key=curve_secret_key)
        self.sink = CountingPublishSink(url, drop_when_full=True, **options)
        self.next_frame = 0
        self.fault = fault
        self.closed = False
        return True

    @property
    def endpoint(self) -> str:
        return self.sink.endpoint

    def get_endpoint(self) -> str:
        return self.endpoint

    def wait_for_subscribers(self, n: int, timeout_s: float) -> bool:
        return self.sink.wait_for_subscribers(n, timeout_s)

    def set_budget(self, max_latency_ms: float, fps: float = 30.0, window_s: float = 5.0) -> bool:
        """Live graphs: keep a `LatencyBudget` over the last `window_s` seconds and publish it
        with every status (per-stage and capture → publish p50/p95, drops by cause, the stage over)."""
        from mmface4d_stream.pipeline.latency_budget import LatencyBudget

        self.sink.budget = LatencyBudget(max_latency_ms, 1000.0 / fps, window_s)
        return True

    def announce(self, state: str) -> bool:
        """Say on the status topic that the graph is in `state` ("ready": warm, the capture clock starts)."""
        self.sink.announce(state)
        return True

    def _account(self, frame: int, cause: str | None = None) -> None:
        """Count the frames before `frame` that never reached the graph (source busy), and `frame`
        itself when it was dropped for `cause`."""
        budget = self.sink.budget
        if frame > self.next_frame:
            self.sink.record_drop("graph", frame - self.next_frame)
            if budget is not None:
                budget.drop("source_busy", frame - self.next_frame)
        if cause is not None:
            self.sink.record_drop("graph")
            if budget is not None:
                budget.drop(cause)
        self.next_frame = max(self.next_frame, frame + 1)

    def publish(self, packet):
        """Publish a mesh packet; returns its capture → publish milliseconds (same host) for a mesh
        that went out, else None (marker, replayed frame, nothing to draw yet)."""
        if packet is None:
            return None
        if isinstance(packet, Dropped):
            if packet.frame >= self.next_frame:
                self._account(packet.frame, packet.cause)
            return None
        mesh = packet.mesh
        if mesh.frame < self.next_frame:
            return None
        self.inject_fault(mesh.seq, mesh.frame)
        self._account(mesh.frame)
        if packet.faces is not None:
            self.sink.set_faces(packet.faces, len(mesh.vertices))
        if not self.sink.has_topology:
            return None  # no topology yet (no face fitted so far): nothing a subscriber could draw
        latency_ms = latency_ms_since(mesh.t_source_ns)
        if self.sink.budget is not None:  # (before `process`: its status carries this frame)
            self.sink.state = "running"
            self.sink.budget.record(mesh.timings_ms, latency_ms, "hurried" in mesh.flags)
        self.sink.process(mesh)
        return latency_ms

    def stats(self) -> dict:
        return self.sink.stats()

    def close(self, reason: str = "finished") -> bool:
        if self.closed:
            return False
        self.closed = True
        self.sink.close(reason)
        return True
