"""Where meshes go: an MMFace4D mesh nut triplet (+ faces and meta json), or a ZeroMQ publisher."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from mmface4d_stream.formats.mesh_nut import MeshNutWriter, mesh_nut_paths
from mmface4d_stream.formats.output_files import replacing
from mmface4d_stream.stream.schema import Thumbnail
from mmface4d_stream.frame_records import MeshFrame

log = logging.getLogger(__name__)


def output_paths(save_path: str | os.PathLike) -> dict[str, Path]:
    """The files of one reconstruction: `OUT_{0,1,2}.nut`, `OUT_faces.npy`, `OUT_meta.json`."""
    save_path = str(save_path)
    x, y, z = mesh_nut_paths(save_path)
    return {"x": x, "y": y, "z": z, "faces": Path(f"{save_path}_faces.npy"), "meta": Path(f"{save_path}_meta.json")}


def has_mesh(mesh: MeshFrame) -> bool:
    """False before the first fitted frame (no vertices yet, or NaN placeholders)."""
    return mesh.vertices.size > 0 and bool(np.isfinite(mesh.vertices).all())


def is_finished(save_path: str | os.PathLike) -> bool:
    """A reconstruction is finished when its meta json (written last, after the nut files) says it
    covered the whole input: a run stopped early by `--max-frames` writes `"complete": false`, so a
    later full run does the sequence again. An unreadable meta json is not finished. Meta files of
    earlier versions (no `complete` key) count as finished."""
    path = output_paths(save_path)["meta"]
    if not path.is_file():
        return False
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("complete", True) is True


def stage_latency(meta: dict) -> dict[str, dict[str, float]]:
    """Per stage the latency figures of a meta json ({stage: {p50, p95, mean, n}} milliseconds):
    `stage_latency_ms`, or the `stage_ms` ({mean, p50, p95}) that `reconstruct` wrote before."""
    figures = meta.get("stage_latency_ms")
    return dict(figures if figures is not None else meta.get("stage_ms", {}))


def update_meta(save_path: str | os.PathLike, fields: dict) -> bool:
    """Add `fields` to a finished reconstruction's meta json (atomically); False when there is none."""
    path = output_paths(save_path)["meta"]
    if not path.is_file():
        return False
    meta = json.loads(path.read_text())
    meta.update(fields)
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(meta, indent=1) + "\n")
    return True


def covers_input(frames_processed: int, input_frames: int | None) -> bool:
    """Whether `frames_processed` output frames cover an input of `input_frames` (None: unknown, e.g. live)."""
    return input_frames is None or frames_processed >= input_frames


class MeshNutSink:
    """Write meshes to `OUT_{0,1,2}.nut` frame by frame; `close(meta)` adds faces and the meta json.

    One output frame per input frame: frames before the first found face repeat the first fitted
    mesh (they are listed as lost in the meta json, never silently invented); later lost frames
    carry the previous mesh, as the fitter returns it. The writer finalizes on any exit, so an
    interrupted run leaves decodable files (and no meta json: a re-run redoes it).
    """

    def __init__(self, save_path: str | os.PathLike, fps: int = 30):
        self.save_path = str(save_path)
        self.paths = output_paths(self.save_path)
        self.paths["meta"].unlink(missing_ok=True)  # a stale meta would mark a half-done re-run as finished
        Path(self.save_path).parent.mkdir(parents=True, exist_ok=True)
        self.writer = MeshNutWriter(self.save_path, fps=fps)
        self.pending_before_first = 0
        self.frames_written = 0

    @property
    def frames_accounted(self) -> int:
        """Frames written or waiting for the first fitted mesh: the next frame's index in the file."""
        return self.frames_written + self.pending_before_first

    def process(self, mesh: MeshFrame) -> MeshFrame:
        if not has_mesh(mesh):
            self.pending_before_first += 1
            return mesh
        for _ in range(self.pending_before_first):
            self.writer.write(mesh.vertices)
            self.frames_written += 1
        self.pending_before_first = 0
        self.writer.write(mesh.vertices)
        self.frames_written += 1
        return mesh

    def abort(self) -> None:
        """Finalize the nut files as they are (decodable), without faces or meta json (a dying process)."""
        self.writer.close(success=False)

    def close(self, faces: np.ndarray | None = None, meta: dict | None = None, success: bool = True) -> None:
        self.writer.close(success=success)
        if faces is not None:
            with replacing(self.paths["faces"]) as tmp:
                np.save(tmp, np.asarray(faces, dtype=np.int32))
        if success and meta is not None:
            processed = self.frames_accounted
            meta = dict(meta, frames_written=self.frames_written, frames_never_fitted=self.pending_before_first,
                        frames_processed=processed, complete=covers_input(processed, meta.get("input_frames")))
            with replacing(self.paths["meta"]) as tmp:
                tmp.write_text(json.dumps(meta, indent=1) + "\n")


class PublishSink:
    """Publish meshes over ZeroMQ (`stream.MeshPublisher`): topology once known, status at 1 Hz, end."""

    def __init__(self, url: str = "tcp://127.0.0.1:5555", drop_when_full: bool = True, publisher=None, **kwargs):
        from mmface4d_stream.stream.publisher import MeshPublisher
        from mmface4d_stream.stream.status import StageMeter

        self.publisher = publisher or MeshPublisher(url, drop_when_full=drop_when_full, **kwargs)
        self._meters: dict[str, StageMeter] = {}
        self._meter_cls = StageMeter
        self._topology_shape: tuple[int, int] | None = None

    @property
    def endpoint(self) -> str:
        """The address subscribers connect to (the bound port when the url asked for any)."""
        return self.publisher.endpoint

    def wait_for_subscribers(self, n: int, timeout_s: float | None) -> bool:
        """Wait until `n` subscribers are connected (False when `timeout_s` passed first)."""
        return self.publisher.wait_for_subscribers(n, timeout_s)

    def stats(self) -> dict:
        """The publisher's counters (meshes, status and topology sent, subscriptions, drops)."""
        return {k: v for k, v in vars(self.publisher.stats).items() if isinstance(v, (int, float))}

    @property
    def has_topology(self) -> bool:
        """Whether subscribers were given the triangles (no mesh can be drawn before)."""
        return self._topology_shape is not None

    def meter(self, stage: str):
        """The `StageMeter` behind the status figures of `stage` (made on first use)."""
        return self._meters.setdefault(stage, self._meter_cls())

    def publish_status(self, force: bool = False) -> None:
        """Publish the status now (`force`) or when its 1 Hz period is due (the figures are
        computed only then)."""
        if not force and not self.publisher.status_due():
            return
        self.publisher.publish_status({k: m.snapshot() for k, m in self._meters.items()}, force=force,
                                      **self.status_extra())

    def set_faces(self, faces: np.ndarray, n_vertices: int) -> None:
        if self._topology_shape != (len(faces), n_vertices):
            self.publisher.set_topology(faces, n_vertices)
            self._topology_shape = (len(faces), n_vertices)

    def process(self, mesh: MeshFrame) -> MeshFrame:
        if not has_mesh(mesh):
            return mesh
        self.publisher.publish_mesh(
            mesh.vertices, frame=mesh.frame, t_capture_ns=mesh.t_capture_ns, smoothed=mesh.smoothed,
            cameras=mesh.cameras, fit={"lost": mesh.lost, "flags": list(mesh.flags),
                                        **{k: v for k, v in mesh.residuals.items() if np.isfinite(v)}},
            thumbnails=[Thumbnail(str(cam), jpeg, width, height) for cam, jpeg, width, height in mesh.thumbnails])
        now = time.monotonic_ns()
        for stage, ms in mesh.timings_ms.items():
            self.meter(stage).record(ms / 1e3)
        if mesh.t_source_ns:
            self.meter("capture_to_publish").record((now - mesh.t_source_ns) / 1e9)
        self.publish_status()
        return mesh

    def status_extra(self) -> dict:
        """Optional status fields (`state`, `budget`) for `publish_status`; none here."""
        return {}

    def close(self, reason: str = "finished") -> None:
        """Send `end` with `reason` (finished, interrupted, error) and close the socket."""
        try:
            self.publisher.publish_end(reason)
        finally:
            self.publisher.close()
