"""Helpers of the live-preview tests: a synthetic mesh stream played by `MeshPublisher`, polling."""

from __future__ import annotations

import io
import socket
import threading
import time

import numpy as np
import pytest

from mmface4d_stream.stream.publisher import MeshPublisher


def sphere_mesh(n_lat: int = 24, n_lon: int = 48, radius_m: float = 0.09, center_m=(0.0, 0.0, 0.7)):
    """A UV sphere in a camera frame: vertices float32 (N, 3) metres, faces int32 (F, 3).

    N = (n_lat - 1) * n_lon + 2 (poles included).
    """
    theta = np.linspace(0, np.pi, n_lat + 1)[1:-1]
    phi = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    ring = np.stack([np.sin(t) * np.cos(p), np.cos(t), np.sin(t) * np.sin(p)], axis=-1).reshape(-1, 3)
    unit = np.concatenate([[[0, 1, 0]], ring, [[0, -1, 0]]]).astype(np.float32)
    faces = []
    top, bottom = 0, len(unit) - 1

    def idx(i, j):
        return 1 + i * n_lon + (j % n_lon)

    for j in range(n_lon):
        faces.append((top, idx(0, j + 1), idx(0, j)))
        faces.append((bottom, idx(n_lat - 2, j), idx(n_lat - 2, j + 1)))
    for i in range(n_lat - 2):
        for j in range(n_lon):
            a, b, c, d = idx(i, j), idx(i, j + 1), idx(i + 1, j), idx(i + 1, j + 1)
            faces += [(a, b, d), (a, d, c)]
    vertices = unit * radius_m + np.asarray(center_m, dtype=np.float32)
    return vertices.astype(np.float32), np.asarray(faces, dtype=np.int32), unit


def deformed(unit: np.ndarray, frame: int, radius_m: float = 0.09, center_m=(0.0, 0.0, 0.7)) -> np.ndarray:
    """`unit` sphere directions with a travelling bump (float32 (N, 3) metres): every frame differs."""
    phase = frame * 0.2
    bump = 1.0 + 0.12 * np.sin(4 * unit[:, 0] + phase) * np.cos(3 * unit[:, 1] - phase)
    return (unit * (radius_m * bump[:, None]) + np.asarray(center_m, dtype=np.float32)).astype(np.float32)


def jpeg_bytes(width: int = 96, height: int = 64, shade: int = 0) -> bytes:
    """A small gradient JPEG (needs Pillow)."""
    image_module = pytest.importorskip("PIL.Image")
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    rgb = np.stack([x, np.full_like(x, shade), 255 - x], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    image_module.fromarray(rgb).save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def free_tcp_url() -> str:
    """A loopback ZeroMQ endpoint on a port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


class StreamPlayer:
    """Publishes meshes at `fps` from a thread until `stop()`.

    By default a deforming sphere (`n_lat`, `n_lon`); with `frames` (float32 (N, 3) metres each)
    and `faces`, those meshes in a loop. Every mesh carries `fit={"lost": lost, ...}`;
    `thumbnails` (camera -> JPEG bytes) ride along when given; `stages` (name -> StageStatus)
    go out in a status report once a second, with `budget` (a live latency budget map) when given.
    """

    def __init__(self, url: str, *, n_lat: int = 24, n_lon: int = 48, fps: float = 30.0,
                 thumbnails: dict[str, bytes] | None = None, lost: bool = False,
                 frames: list[np.ndarray] | None = None, faces: np.ndarray | None = None,
                 stages: dict | None = None, budget: dict | None = None):
        from mmface4d_stream.stream.schema import StageStatus

        if frames is None:
            _, self.faces, self.unit = sphere_mesh(n_lat, n_lon)
            self.n_vertices = len(self.unit)
        else:
            self.faces, self.unit = np.asarray(faces, np.int32), None
            self.n_vertices = len(frames[0])
        self.frames = frames
        self.url = url
        self.fps = fps
        self.lost = lost
        self.thumbnails = thumbnails or {}
        self.stages = stages or {"fitter": StageStatus(fps=fps, latency_ms=12.5, drops=1),
                                 "publisher": StageStatus(fps=fps, latency_ms=0.5, drops=0)}
        self.budget = budget
        self.frames_sent = 0
        self.last_vertices: np.ndarray | None = None
        self.publisher = bind_retrying(url)
        self.topology_id = self.publisher.set_topology(self.faces, self.n_vertices)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from mmface4d_stream.stream.schema import Thumbnail

        thumbs = [Thumbnail(camera=c, jpeg=j, width=96, height=64) for c, j in self.thumbnails.items()]
        period = 1.0 / self.fps
        next_t = time.monotonic()
        while not self._stop.is_set():
            if self.frames is None:
                vertices = deformed(self.unit, self.frames_sent)
            else:
                vertices = self.frames[self.frames_sent % len(self.frames)]
            self.publisher.publish_mesh(
                vertices, frame=self.frames_sent, fit={"lost": self.lost, "iterations": 3},
                cameras=list(self.thumbnails) or ["0", "1", "2"], thumbnails=thumbs, smoothed=True,
            )
            self.last_vertices = vertices
            self.frames_sent += 1
            self.publisher.publish_status(self.stages, **({} if self.budget is None else
                                                             {"state": "running", "budget": self.budget}))
            next_t += period
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def stop(self, end: bool = False) -> None:
        self._stop.set()
        self._thread.join(5)
        if end:
            self.publisher.publish_end("finished")
        self.publisher.close(linger_s=0.2 if end else 0)


def bind_retrying(url: str, timeout_s: float = 5.0) -> MeshPublisher:
    """Bind a publisher; a port just released by a previous one can take a moment to be free."""
    import zmq

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return MeshPublisher(url)
        except zmq.ZMQError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def wait_until(predicate, timeout_s: float = 10.0, period_s: float = 0.05, what: str = "condition"):
    """Poll `predicate` until it returns a truthy value (returned) or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(period_s)

