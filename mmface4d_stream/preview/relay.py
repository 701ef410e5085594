"""`StreamRelay`: a background thread that follows a mesh stream and keeps only its latest state.

The relay subscribes with `MeshSubscriber` (which validates every message and skips malformed
ones) and keeps, already encoded in the browser framing (`framing`): the current topology, the
latest drawable mesh, the latest thumbnail of each camera, and the figures the page shows. Older
meshes are overwritten, never queued: whoever reads `snapshot()` gets the newest state, however
late it reads.

ZeroMQ reconnects a SUB socket by itself, so a publisher that stops and comes back on the same
URL is picked up again; the publisher sends the topology to every (re)subscription, and the
subscriber asks for it again when a mesh names a topology it has not seen.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from mmface4d_stream.preview import framing
from mmface4d_stream.stream import schema
from mmface4d_stream.stream.status import StageMeter
from mmface4d_stream.stream.subscriber import MeshSubscriber

log = logging.getLogger(__name__)

# The stream is "stalled" after this long without any message (status alone arrives at 1 Hz).
STALLED_AFTER_S = 2.5
# How often the receiving thread wakes up to check for `close()`.
_POLL_S = 0.2


@dataclasses.dataclass(frozen=True)
class TopologyState:
    """The topology the page draws with: `frame` is its TOPOLOGY message."""

    key: int
    topology_id: str
    n_vertices: int
    n_faces: int
    frame: bytes


@dataclasses.dataclass(frozen=True)
class MeshState:
    """The newest drawable mesh: `frame` is its MESH message; `seq` counts accepted meshes."""

    seq: int
    frame_index: int
    topology_key: int
    frame: bytes


@dataclasses.dataclass(frozen=True)
class RelaySnapshot:
    """What a page needs, at one instant.

    topology, mesh: latest states (None until received). thumbnails: camera -> (version, THUMBNAIL
    message). info: JSON-ready dict of stream figures (see `StreamRelay.info`). version: bumps on
    every change, so a reader can tell whether anything is new.
    """

    version: int
    topology: TopologyState | None
    mesh: MeshState | None
    thumbnails: Mapping[str, tuple[int, bytes]]
    info: dict[str, Any]


class StreamRelay:
    """Follows the mesh stream at `url` in a daemon thread; read it with `snapshot()`.

    Args:
        url: the publisher's endpoint, e.g. ``tcp://127.0.0.1:5555``.
        on_change: called (from the relay thread) after every state change; must not block.
        subscriber_options: extra keyword arguments of `MeshSubscriber` (CURVE keys, receive_hwm).
    """

    def __init__(
        self,
        url: str,
        on_change: Callable[[], None] | None = None,
        subscriber_options: Mapping[str, Any] | None = None,
    ):
        self.url = url
        self._on_change = on_change
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._version = 0
        self._topology: TopologyState | None = None
        self._pending_mesh: schema.MeshMessage | None = None
        self._mesh: MeshState | None = None
        self._mesh_seq = 0
        self._thumbnails: dict[str, tuple[int, bytes]] = {}
        self._thumb_version = 0
        self._topology_keys: dict[str, int] = {}
        self._meter = StageMeter(window_s=2.0)
        self._last_message_s: float | None = None
        self._last_mesh_header: dict[str, Any] = {}
        self._publish_latency_ms: float | None = None
        self._capture_latency_ms: float | None = None
        self._status: schema.StatusMessage | None = None
        self._end: schema.EndMessage | None = None
        # Created here, not in the thread, so a bad URL raises in the caller.
        self._subscriber = MeshSubscriber(url, timeout_s=_POLL_S, stop_on_end=False, **dict(subscriber_options or {}))
        self._thread = threading.Thread(target=self._run, name="preview-relay", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------ receiving

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    message = self._subscriber.recv(_POLL_S)
                except Exception:  # a bug here must not end the preview: log it and go on
                    log.exception("preview relay: receiving failed")
                    time.sleep(_POLL_S)
                    continue
                if message is None:
                    continue
                try:
                    self._handle(message)
                except Exception:
                    log.exception("preview relay: could not handle a %s message", type(message).__name__)
                    continue
                if self._on_change is not None:
                    self._on_change()
        finally:
            self._subscriber.close()

    def _handle(self, message: schema.Message) -> None:
        now = time.monotonic()
        with self._lock:
            self._last_message_s = now
            self._version += 1
            if isinstance(message, schema.MeshMessage):
                self._handle_mesh(message)
            elif isinstance(message, schema.TopologyMessage):
                self._handle_topology(message)
            elif isinstance(message, schema.StatusMessage):
                self._status = message
            elif isinstance(message, schema.EndMessage):
                self._end = message
                log.info("stream ended (%s) after %d meshes", message.reason, message.n_meshes)

    def _handle_topology(self, message: schema.TopologyMessage) -> None:
        if self._topology is not None and self._topology.topology_id == message.topology_id:
            return
        key = self._topology_keys.setdefault(message.topology_id, len(self._topology_keys) + 1)
        self._topology = TopologyState(
            key=key,
            topology_id=message.topology_id,
            n_vertices=message.n_vertices,
            n_faces=message.n_faces,
            frame=framing.encode_topology_frame(message.faces, n_vertices=message.n_vertices, topology_key=key),
        )
        if self._pending_mesh is not None:
            self._accept_mesh(self._pending_mesh)

    def _handle_mesh(self, message: schema.MeshMessage) -> None:
        now_ns = time.time_ns()
        self._end = None
        self._meter.record(max(0, now_ns - message.t_capture_ns) / 1e9)
        self._publish_latency_ms = (now_ns - message.t_publish_ns) / 1e6
        self._capture_latency_ms = (now_ns - message.t_capture_ns) / 1e6
        self._last_mesh_header = {
            "frame": message.frame,
            "publisher_seq": message.seq,
            "smoothed": message.smoothed,
            "cameras": list(message.cameras),
            "lost": bool(message.fit.get("lost", False)),
            "fit": _scalars(message.fit),
        }
        for thumbnail in message.thumbnails:
            self._thumb_version += 1
            self._thumbnails[thumbnail.camera] = (
                self._thumb_version,
                framing.encode_thumbnail_frame(thumbnail.camera, thumbnail.jpeg, frame=message.frame),
            )
        topology = self._topology
        if topology is None or topology.topology_id != message.topology_id or topology.n_vertices != message.n_vertices:
            # Wait for its topology (the subscriber asks for it); keep only the newest such mesh.
            self._pending_mesh = message
            return
        self._accept_mesh(message)

    def _accept_mesh(self, message: schema.MeshMessage) -> None:
        topology = self._topology
        if topology is None or topology.topology_id != message.topology_id or topology.n_vertices != message.n_vertices:
            return
        self._pending_mesh = None
        self._mesh_seq += 1
        self._mesh = MeshState(
            seq=self._mesh_seq,
            frame_index=message.frame,
            topology_key=topology.key,
            frame=framing.encode_mesh_frame(
                message.vertices,
                seq=self._mesh_seq,
                frame=message.frame,
                topology_key=topology.key,
                smoothed=message.smoothed,
                lost=bool(message.fit.get("lost", False)),
            ),
        )

    # -------------------------------------------------------------------------------- reading

    def info(self) -> dict[str, Any]:
        """JSON-ready figures of the stream.

        state: "waiting" (nothing received yet), "streaming", "stalled" (no message for
        `STALLED_AFTER_S`), or "ended" (the publisher sent ``end``). rate_fps / latency_ms:
        meshes per second reaching the preview and median capture-to-preview latency (ms) over
        the last 2 s. received / rejected / dropped: the subscriber's counters (dropped: gaps in
        the publisher's sequence numbers). stages: the publisher's last ``status``; graph_state and
        budget: its optional fields (the graph's phase, e.g. "ready"; the live latency budget with
        per-stage p50/p95 and the stage over it), None when the publisher sends none.
        """
        with self._lock:
            return self._info_locked()

    def _info_locked(self) -> dict[str, Any]:
        now = time.monotonic()
        age = None if self._last_message_s is None else now - self._last_message_s
        if self._last_message_s is None:
            state = "waiting"
        elif self._end is not None:
            state = "ended"
        elif age > STALLED_AFTER_S:
            state = "stalled"
        else:
            state = "streaming"
        rate = self._meter.snapshot()
        stats = self._subscriber.stats
        topology = self._topology
        status = self._status
        return {
            "url": self.url,
            "state": state,
            "age_s": _finite(age),
            "rate_fps": _finite(rate.fps if state in ("streaming", "ended") else 0.0),
            "latency_ms": _finite(rate.latency_ms if rate.fps > 0 else None),
            "publish_latency_ms": _finite(self._publish_latency_ms),
            "capture_latency_ms": _finite(self._capture_latency_ms),
            "received": stats.received,
            "meshes": stats.meshes,
            "rejected": stats.rejected,
            "dropped": stats.dropped,
            "last_error": stats.last_error,
            "end_reason": None if self._end is None else self._end.reason,
            "topology": None if topology is None else {
                "id": topology.topology_id, "key": topology.key,
                "n_vertices": topology.n_vertices, "n_faces": topology.n_faces,
            },
            "waiting_for_topology": self._pending_mesh is not None,
            "mesh": dict(self._last_mesh_header),
            "stages": {} if status is None else {
                name: {"fps": s.fps, "latency_ms": s.latency_ms, "drops": s.drops}
                for name, s in status.stages.items()
            },
            "status_age_s": None if status is None else _finite((time.time_ns() - status.t_publish_ns) / 1e9),
            "graph_state": None if status is None else status.state,
            "budget": None if status is None or status.budget is None else _json_safe(status.budget),
        }

    def snapshot(self) -> RelaySnapshot:
        """The latest state (cheap: the big parts are shared, already-encoded bytes)."""
        with self._lock:
            return RelaySnapshot(
                version=self._version,
                topology=self._topology,
                mesh=self._mesh,
                thumbnails=dict(self._thumbnails),
                info=self._info_locked(),
            )

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop the thread and close the subscriber."""
        self._stop.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("preview relay thread did not stop within %.1f s", timeout_s)


def _finite(value: float | None) -> float | None:
    """JSON has no NaN/inf: those become None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _json_safe(value: Any, depth: int = 0) -> Any:
    """A received free-form map as JSON-safe plain values (non-finite numbers become None; deeper
    than a few levels, or of another type, dropped): it comes from the network."""
    if depth > 4:
        return None
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return _finite(value) if isinstance(value, float) else value
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v, depth + 1) for v in value]
    return None


def _scalars(fit: Mapping[str, Any]) -> dict[str, Any]:
    """The plain scalar entries of a fit dict (what the page can show in a line); string lists joined."""
    out = {}
    for key, value in fit.items():
        if isinstance(value, bool) or value is None or isinstance(value, str):
            out[key] = value
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            out[key] = ", ".join(value)
        elif isinstance(value, (int, float)):
            out[key] = _finite(value) if isinstance(value, float) else value
    return out
