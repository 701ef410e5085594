"""Mesh nut codec speed and size at the BFM front model's 35709 vertices.

Prints a markdown table: encode and decode frames/s (decoding on the calling thread only, and on
FFmpeg's frame threads with the slice CRCs checked in Python), bytes per frame, and the released
sample's bytes per frame for comparison.

    python benchmarks/codec.py [--frames 300] [--threads 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from mmface4d_stream.formats.gray16_video import DECODER_THREADS
from mmface4d_stream.formats.mesh_nut import MeshNutReader, MeshNutWriter, mesh_nut_paths

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "samples" / "mmface4d_000337" / "reconstruct_filt"


def talking_face_sequence(frames: int, n_vertices: int = 35709, seed: int = 0):
    """A face-sized point set (metres, ~0.7 m away) with smooth per-frame motion, one frame at a time."""
    if all(p.is_file() for p in mesh_nut_paths(SAMPLE)):
        with MeshNutReader(SAMPLE) as reader:
            base = [f for f in reader]
    else:
        rng = np.random.default_rng(seed)
        base = [rng.normal(0, [0.05, 0.06, 0.03], (n_vertices, 3)).astype(np.float32) + np.float32([0, 0, 0.7])]
    for i in range(frames):
        # Ping-pong through the real frames so motion stays continuous, as in a recording.
        period = max(1, 2 * len(base) - 2)
        k = i % period
        yield base[k if k < len(base) else period - k]


def bytes_per_frame(prefix: Path | str, frames: int) -> float:
    return sum(os.path.getsize(p) for p in mesh_nut_paths(prefix)) / frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=300, help="frames to encode and decode (default 300)")
    parser.add_argument("--threads", type=int, default=DECODER_THREADS,
                        help=f"decoder frame threads per axis file (default {DECODER_THREADS})")
    args = parser.parse_args()
    frames = list(talking_face_sequence(args.frames))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "bench"
        start = time.perf_counter()
        with MeshNutWriter(prefix) as writer:
            for vertices in frames:
                writer.write(vertices)
        encode_s = time.perf_counter() - start
        size = bytes_per_frame(prefix, len(frames))
        rows.append(("encode", len(frames) / encode_s, size))
        decodes = (("decode (1 thread)", 1), (f"decode (frame threads, {args.threads} per file)", args.threads))
        for label, threads in decodes:
            with MeshNutReader(prefix, threads=threads) as reader:
                start = time.perf_counter()
                count = sum(1 for _ in reader)
                rows.append((label, count / (time.perf_counter() - start), size))
    sample_size = bytes_per_frame(SAMPLE, 67) if all(p.is_file() for p in mesh_nut_paths(SAMPLE)) else float("nan")
    print(f"mesh nut codec, {frames[0].shape[0]} vertices, {len(frames)} frames, {os.cpu_count()} CPU cores\n")
    print("| operation | frames/s | bytes/frame (ours) | bytes/frame (released sample) |")
    print("|---|---:|---:|---:|")
    for label, fps, size in rows:
        print(f"| {label} | {fps:.0f} | {size:.0f} | {sample_size:.0f} |")


if __name__ == "__main__":
    main()
