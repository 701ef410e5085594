"""`mmface4d subscribe`: watch or record a mesh stream.

Prints a line per second with the mesh rate and two latencies (publisher send → receipt, capture
→ receipt; both need the producer's clock to agree with ours), or records the meshes to a mesh nut
triplet plus ``PREFIX_faces.npy``. Stops on the publisher's ``end``, after ``--frames`` meshes,
or after ``--timeout`` seconds without a message.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from pathlib import Path

import numpy as np

from mmface4d_stream.errors import InputError
from mmface4d_stream.stream import schema
from mmface4d_stream.stream.publisher import DEFAULT_URL
from mmface4d_stream.stream.subscriber import MeshSubscriber

log = logging.getLogger(__name__)

REPORT_PERIOD_S = 1.0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "subscribe",
        help="receive a mesh stream: print rate and latency, or record it to a mesh nut triplet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("url", nargs="?", default=DEFAULT_URL, help=f"publisher endpoint (default {DEFAULT_URL})")
    parser.add_argument("--frames", type=int, default=None, metavar="N", help="stop after N meshes")
    parser.add_argument(
        "--save", default=None, metavar="PREFIX",
        help="record meshes to PREFIX_{0,1,2}.nut and the triangles to PREFIX_faces.npy",
    )
    parser.add_argument(
        "--timeout", type=float, default=None, metavar="S",
        help="give up after S seconds without any message (default: wait forever)",
    )
    parser.add_argument(
        "--server-key", default=None, metavar="KEY",
        help="the publisher's CURVE public key (Z85 text, a file holding it, or its ZeroMQ certificate) for an "
             "encrypted stream",
    )
    parser.add_argument(
        "--max-message-mb", type=float, default=schema.DEFAULT_MAX_MESSAGE_BYTES / (1 << 20), metavar="MB",
        help="reject (count and skip) messages larger than this (default %(default)g MiB, ~4 BFM meshes)",
    )
    parser.set_defaults(func=cmd_subscribe)


def _read_key(value: str | None) -> str | None:
    if value is None:
        return None
    path = Path(value)
    if len(value) != 40 and path.is_file():
        text = path.read_text(errors="replace")
        if "public-key" in text:  # a ZeroMQ certificate (.key or .key_secret)
            from mmface4d_stream.stream.curve import load_certificate

            return load_certificate(path).public.decode("ascii")
        value = text.strip()
    if len(value) != 40:
        raise InputError(f"a CURVE key is 40 Z85 characters, got {len(value)}", path=None)
    return value


def _percentiles_ms(samples_ns: list[int]) -> tuple[float, float]:
    from mmface4d_stream.pipeline.latency_budget import latency_stats

    stats = latency_stats(np.asarray(samples_ns, dtype=np.float64) / 1e6, None)
    return (stats["p50"], stats["p95"]) if stats else (float("nan"), float("nan"))


class _Recorder:
    """Writes received meshes to a nut triplet; faces go to PREFIX_faces.npy."""

    def __init__(self, prefix: str):
        from mmface4d_stream.formats.mesh_nut import MeshNutWriter

        self.prefix = prefix
        Path(prefix).resolve().parent.mkdir(parents=True, exist_ok=True)
        self._writer = MeshNutWriter(prefix, fps=30)
        self._faces_id: str | None = None
        self.n_vertices: int | None = None
        self.skipped = 0

    def topology(self, message: schema.TopologyMessage) -> None:
        if self._faces_id == message.topology_id:
            return
        if self._faces_id is not None:
            log.warning("topology changed to %s; overwriting %s_faces.npy", message.topology_id, self.prefix)
        np.save(f"{self.prefix}_faces.npy", np.asarray(message.faces, dtype=np.int32))
        self._faces_id = message.topology_id

    def mesh(self, message: schema.MeshMessage) -> bool:
        """Append one mesh; one that cannot join the recording (another vertex count, non-finite
        coordinates) is skipped, counted in `skipped` and logged, and recording goes on."""
        reason = None
        if self.n_vertices is not None and message.n_vertices != self.n_vertices:
            reason = f"{message.n_vertices} vertices, the recording has {self.n_vertices}"
        elif not np.isfinite(message.vertices).all():
            reason = "NaN or inf coordinates"
        if reason is not None:
            self.skipped += 1
            log.warning("%s: skipped mesh seq %d (frame %d): %s", self.prefix, message.seq, message.frame, reason)
            return False
        self.n_vertices = message.n_vertices
        self._writer.write(message.vertices)
        return True

    def close(self) -> None:
        # Finalize whatever arrived, also after an error or Ctrl-C: a partial recording stays readable.
        self._writer.close()


def cmd_subscribe(args: argparse.Namespace) -> int:
    if args.frames is not None and args.frames < 1:
        raise InputError(f"--frames must be >= 1, got {args.frames}")
    if not args.max_message_mb > 0:
        raise InputError(f"--max-message-mb must be positive, got {args.max_message_mb}")
    server_key = _read_key(args.server_key)
    recorder = _Recorder(args.save) if args.save else None
    received = 0
    publish_lat: list[int] = []
    capture_lat: list[int] = []
    window_pub: list[int] = []
    window_cap: list[int] = []
    window_count = 0
    started = window_start = time.monotonic()
    ended = timed_out = False
    ok = False
    with contextlib.ExitStack() as stack:
        subscriber = stack.enter_context(
            MeshSubscriber(args.url, timeout_s=args.timeout, curve_server_key=server_key,
                           max_message_bytes=int(args.max_message_mb * (1 << 20)), repair=bool(args.save))
        )
        try:
            while args.frames is None or received < args.frames:
                message = subscriber.recv()
                now_ns = time.time_ns()
                if message is None:
                    timed_out = True
                    log.warning("no message from %s within %s s; stopping", args.url, args.timeout)
                    break
                if isinstance(message, schema.TopologyMessage):
                    if recorder:
                        recorder.topology(message)
                elif isinstance(message, schema.MeshMessage):
                    if received == 0:
                        started = window_start = time.monotonic()
                    received += 1
                    window_count += 1
                    window_pub.append(now_ns - message.t_publish_ns)
                    window_cap.append(now_ns - message.t_capture_ns)
                    if recorder:
                        recorder.mesh(message)
                elif isinstance(message, schema.StatusMessage):
                    print("status: " + _format_status(message), flush=True)
                elif isinstance(message, schema.EndMessage):
                    ended = True
                    break
                elapsed = time.monotonic() - window_start
                if elapsed >= REPORT_PERIOD_S:
                    _report(f"{received:7d} meshes", window_count / elapsed, window_pub, window_cap, subscriber)
                    publish_lat += window_pub
                    capture_lat += window_cap
                    window_pub, window_cap, window_count = [], [], 0
                    window_start = time.monotonic()
            ok = True
        finally:
            if recorder:
                recorder.close()
    publish_lat += window_pub
    capture_lat += window_cap
    duration = time.monotonic() - started
    fps = (received - 1) / duration if received > 1 and duration > 0 else float("nan")
    why = "end of sequence" if ended else ("timeout" if timed_out else "frame limit")
    if received:
        _report(f"total {received} meshes ({why})", fps, publish_lat, capture_lat, subscriber)
    else:
        print(f"total 0 meshes ({why}); rejected {subscriber.stats.rejected} malformed messages", flush=True)
    if recorder and subscriber.stats.lost:
        log.warning(
            "%d meshes were lost for good (this subscriber fell further behind than the publisher's "
            "history, or the publisher keeps none), so the recording has gaps; the run's mesh files "
            "hold every frame", subscriber.stats.lost,
        )
    if recorder and recorder.skipped:
        log.warning("%d meshes were skipped (another vertex count or non-finite coordinates)", recorder.skipped)
    if recorder and received:
        print(f"recorded {received - recorder.skipped} meshes to {args.save}_{{0,1,2}}.nut"
              + (f" and {args.save}_faces.npy" if subscriber.topology is not None else " (no topology received)"))
    return 0 if ok and received > 0 else 1


def _format_status(message: schema.StatusMessage) -> str:
    return " | ".join(
        f"{name} {stage.fps:.1f} fps {stage.latency_ms:.1f} ms {stage.drops} dropped"
        for name, stage in message.stages.items()
    ) or "(no stages)"


def _report(label: str, fps: float, pub: list[int], cap: list[int], subscriber: MeshSubscriber) -> None:
    pub50, pub95 = _percentiles_ms(pub)
    cap50, cap95 = _percentiles_ms(cap)
    stats = subscriber.stats
    print(
        f"{label}: {fps:6.1f} fps | publish->recv p50 {pub50:7.2f} ms p95 {pub95:7.2f} ms | "
        f"capture->recv p50 {cap50:7.2f} ms p95 {cap95:7.2f} ms | dropped {stats.dropped} "
        f"(repaired {stats.repaired}) rejected {stats.rejected}",
        flush=True,
    )
