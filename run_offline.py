#!/usr/bin/env python
"""Offline reconstruction entry point (`make demo` runs it with no arguments).

Interim version while the Ray graph is being built: with no arguments it generates the embedded
sample subject's procedural performance (from scikit-image's public-domain astronaut portrait),
streams the ground-truth vertices into an MMFace4D mesh nut triplet, decodes it back frame by
frame, and reports sizes, speed and the codec's error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mmface4d_stream.formats.cli import describe_mesh
from mmface4d_stream.formats.mesh_nut import MeshNutReader, MeshNutWriter, mesh_nut_paths
from mmface4d_stream.render.subject import generate_performance, sample_subject

log = logging.getLogger("run_offline")


def demo(out_dir: Path, frames: int, seed: int) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = out_dir / "sample_subject"
    log.info("building the embedded sample subject (astronaut portrait + MediaPipe mesh)")
    subject = sample_subject()
    performance = generate_performance(frames, seed=seed)
    face = slice(0, subject.n_face_vertices)
    start = time.perf_counter()
    with MeshNutWriter(prefix) as writer:
        for i in tqdm(range(frames), desc="encode", unit="frame", file=sys.stderr, leave=False):
            vertices = subject.vertices(performance.expression(i), performance.rotation[i],
                                        performance.translation[i])[face]
            writer.write(vertices)
    encode_s = time.perf_counter() - start
    worst = 0.0
    start = time.perf_counter()
    with MeshNutReader(prefix) as reader:
        for i, decoded in enumerate(tqdm(reader, total=len(reader), desc="decode", unit="frame",
                                         file=sys.stderr, leave=False)):
            truth = subject.vertices(performance.expression(i), performance.rotation[i],
                                     performance.translation[i])[face]
            worst = max(worst, float(np.abs(decoded - truth).max()))
    decode_s = time.perf_counter() - start
    summary = describe_mesh(str(prefix))
    size = sum(p.stat().st_size for p in mesh_nut_paths(prefix))
    print(json.dumps(summary, indent=1))
    print(f"\nwrote {', '.join(str(p) for p in mesh_nut_paths(prefix))}")
    print(f"{frames} frames x {summary['vertices']} vertices: {size / frames / 1024:.1f} KiB/frame, "
          f"encode+generate {frames / encode_s:.0f} frames/s, decode+regenerate {frames / decode_s:.0f} frames/s, "
          f"worst coordinate error {worst * 1e6:.1f} µm")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default out/demo)")
    parser.add_argument("--frames", type=int, default=90, help="frames of the sample performance (default 90)")
    parser.add_argument("--seed", type=int, default=0, help="performance seed (default 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return demo(args.out, args.frames, args.seed)


if __name__ == "__main__":
    sys.exit(main())
