"""Mesh stream: publisher -> subscriber latency and throughput on loopback TCP.

For 1 and 8 subscribers (separate processes) at 35709 vertices (BFM front, 428 KB per mesh):

- "live 30 fps": the publisher paces meshes at 30 fps in live mode (drop when full); latency
  is publish -> receipt per mesh (p50/p95), and meshes lost by each subscriber are counted.
- "offline max": the publisher sends as fast as the slowest subscriber allows (no drops);
  throughput is meshes per second per subscriber; latency there includes queueing.

Usage: python benchmarks/stream.py [--frames N] [--vertices N] [--subscribers 1 8]
Prints a markdown table. Numbers depend on the machine's load (other processes share the cores).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import time

import numpy as np

from mmface4d_stream.pipeline.latency_budget import latency_stats
from mmface4d_stream.stream import schema
from mmface4d_stream.stream.publisher import MeshPublisher
from mmface4d_stream.stream.subscriber import MeshSubscriber


def _subscriber_process(url: str, results: mp.Queue) -> None:
    latencies_ns = []
    with MeshSubscriber(url, topics=("mesh", "end"), timeout_s=60, receive_hwm=4) as sub:
        first = last = None
        for message in sub:
            now = time.time_ns()
            if isinstance(message, schema.MeshMessage):
                latencies_ns.append(now - message.t_publish_ns)
                first = first if first is not None else time.perf_counter()
                last = time.perf_counter()
        results.put({
            "meshes": sub.stats.meshes,
            "dropped": sub.stats.dropped,
            "latency_ns": np.asarray(latencies_ns, dtype=np.int64),
            "span_s": (last - first) if first is not None and last is not None else 0.0,
        })


def run_case(n_subscribers: int, n_frames: int, n_vertices: int, paced_fps: float | None) -> dict:
    context = mp.get_context("spawn")
    results: mp.Queue = context.Queue()
    rng = np.random.default_rng(0)
    meshes = [rng.normal(0, 0.05, size=(n_vertices, 3)).astype(np.float32) for _ in range(8)]
    faces = rng.integers(0, n_vertices, size=(70789, 3))
    live = paced_fps is not None
    with MeshPublisher("tcp://127.0.0.1:*", drop_when_full=live, send_hwm=4, end_timeout_s=10) as pub:
        pub.set_topology(faces, n_vertices)
        procs = [context.Process(target=_subscriber_process, args=(pub.endpoint, results)) for _ in range(n_subscribers)]
        for proc in procs:
            proc.start()
        if not pub.wait_for_subscribers(n_subscribers, timeout_s=60):
            raise RuntimeError("subscribers did not connect")
        time.sleep(0.2)
        send_s = []
        start = time.perf_counter()
        for frame in range(n_frames):
            if live:
                target = start + frame / paced_fps
                while (wait := target - time.perf_counter()) > 0:
                    time.sleep(wait)
            t0 = time.perf_counter()
            pub.publish_mesh(meshes[frame % 8], frame=frame)
            send_s.append(time.perf_counter() - t0)
        publish_span = time.perf_counter() - start
        pub.publish_end()
        reports = [results.get(timeout=120) for _ in procs]
        for proc in procs:
            proc.join(30)
    latency_ms = np.concatenate([r["latency_ns"] for r in reports]) / 1e6
    delivered = np.mean([r["meshes"] for r in reports])
    spans = [r["span_s"] for r in reports if r["meshes"] > 1]
    per_sub_rate = np.mean([(r["meshes"] - 1) / r["span_s"] for r in reports if r["meshes"] > 1 and r["span_s"] > 0])
    return {
        "subscribers": n_subscribers,
        "mode": f"live {paced_fps:g} fps" if live else "offline max",
        "frames": n_frames,
        "delivered": delivered,
        "dropped": float(np.mean([r["dropped"] for r in reports])),
        "p50": latency_stats(latency_ms, None).get("p50", float("nan")),
        "p95": latency_stats(latency_ms, None).get("p95", float("nan")),
        "rate": float(per_sub_rate) if spans else float("nan"),
        "publish_rate": n_frames / publish_span,
        "send_ms": float(np.median(send_s) * 1e3),
        "mb_s": float(per_sub_rate) * n_subscribers * n_vertices * 12 / 1e6 if spans else float("nan"),
    }


def codec_cost(n_vertices: int, repeats: int = 200) -> tuple[float, float]:
    """Median microseconds to encode and to decode one mesh message (no sockets)."""
    vertices = np.random.default_rng(1).normal(0, 0.05, size=(n_vertices, 3)).astype(np.float32)
    message = schema.MeshMessage(seq=0, frame=0, t_capture_ns=0, t_publish_ns=0, vertices=vertices,
                                 topology_id="bench", fit={"iterations": 3, "cost": 0.1})
    encode_s, decode_s = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        parts = schema.encode(message)
        t1 = time.perf_counter()
        schema.decode(parts)
        decode_s.append(time.perf_counter() - t1)
        encode_s.append(t1 - t0)
    return float(np.median(encode_s) * 1e6), float(np.median(decode_s) * 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--vertices", type=int, default=35709)
    parser.add_argument("--subscribers", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    rows = []
    for n in args.subscribers:
        rows.append(run_case(n, args.frames, args.vertices, paced_fps=30.0))
        rows.append(run_case(n, args.frames * 2, args.vertices, paced_fps=None))
    print(f"\nMesh stream on loopback TCP, {args.vertices} vertices ({args.vertices * 12 / 1e3:.0f} KB/mesh), "
          f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, pyzmq; shared, loaded machine.\n")
    print("| subscribers | mode | frames | delivered/sub | lost/sub | latency p50 (ms) | latency p95 (ms) "
          "| meshes/s per sub | total MB/s | publish_mesh median (ms) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['subscribers']} | {r['mode']} | {r['frames']} | {r['delivered']:.0f} | {r['dropped']:.1f} "
              f"| {r['p50']:.2f} | {r['p95']:.2f} | {r['rate']:.0f} | {r['mb_s']:.0f} | {r['send_ms']:.2f} |")
    encode_us, decode_us = codec_cost(args.vertices)
    print("\n| wire schema, one mesh | median (µs) |\n|---|---|")
    print(f"| encode (validate, float32 bytes, msgpack header) | {encode_us:.0f} |")
    print(f"| decode (validate, zero-copy view) | {decode_us:.0f} |")


if __name__ == "__main__":
    main()
