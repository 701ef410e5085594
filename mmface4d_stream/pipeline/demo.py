"""The out-of-the-box demo: synthesize the embedded sample capture, reconstruct it, show the result.

Steps, all on real files under `out_dir`: `render.synth.synthesize_capture` (Azure-Kinect-style MKVs,
the dataset-format folder and ground truth), reconstruction of the dataset folder with a runner
(by default `pipeline.run.reconstruct`, one process; `run_offline.py` passes its Ray graph), a
preview video of the reconstructed meshes (`render.visualize`), and the error against the ground
truth (`fit.evaluate`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)


@dataclass
class DemoResult:
    capture_dir: Path
    mesh_prefix: Path
    video: Path
    meta: dict
    error: dict
    seconds: dict


def run_demo(out_dir: str | os.PathLike = "out/demo", frames: int = 60, cameras: int = 3, seed: int = 0,
             runner: Callable[[list, Path], dict] | None = None) -> DemoResult:
    """Synthesize, reconstruct, render and evaluate; returns the paths and figures.

    runner(inputs, save_path) -> meta dict: how to reconstruct (default: `reconstruct` in this process).
    """
    from mmface4d_stream.fit.evaluate import evaluate_sequence
    from mmface4d_stream.render.synth import synthesize_capture
    from mmface4d_stream.render.visualize import render_mesh_video

    if runner is None:
        from mmface4d_stream.pipeline.run import ReconstructOptions, reconstruct

        def runner(inputs, save_path):
            return reconstruct(inputs, save_path, ReconstructOptions())

    out_dir = Path(out_dir)
    seconds = {}
    start = time.perf_counter()
    log.info("1/4 synthesizing the sample capture (%d frames, %d cameras) in %s", frames, cameras, out_dir / "capture")
    capture = synthesize_capture(out_dir / "capture", frames=frames, cameras=cameras, seed=seed, name="sample",
                                 reuse=True)
    seconds["synthesize"] = time.perf_counter() - start
    start = time.perf_counter()
    mesh_prefix = out_dir / "reconstruction" / "sample"
    log.info("2/4 reconstructing %s", capture.sequence_prefix)
    meta = runner([capture.sequence_prefix], mesh_prefix)
    seconds["reconstruct"] = time.perf_counter() - start
    start = time.perf_counter()
    log.info("3/4 rendering the reconstructed meshes to a video")
    video = render_mesh_video(mesh_prefix, out_dir / "preview", faces=Path(f"{mesh_prefix}_faces.npy"))
    seconds["render"] = time.perf_counter() - start
    log.info("4/4 comparing with the ground truth")
    error = evaluate_sequence(mesh_prefix, capture.gt_mesh_prefix.parent,
                              reference_device=meta.get("reference_camera")).to_dict()
    (out_dir / "error.json").write_text(json.dumps(error, indent=1) + "\n")
    return DemoResult(out_dir / "capture", mesh_prefix, video, meta, error, seconds)


def describe(result: DemoResult) -> str:
    """What the demo did and where its files are, for the terminal."""
    e = result.error
    fwd, back = e["recon_to_gt_mm"], e["gt_to_recon_mm"]
    return "\n".join([
        f"synthetic capture:    {result.capture_dir}  (MKVs in kinect/, dataset files, ground truth in gt/)",
        f"reconstructed meshes: {result.mesh_prefix}_{{0,1,2}}.nut  (+ _faces.npy, _meta.json)",
        f"preview video:        {result.video}",
        f"frames: {result.meta.get('frames')}, lost face: {len(result.meta.get('frames_lost_face', []))}, "
        f"model: {result.meta.get('model')}",
        f"error vs ground truth: reconstructed -> true surface mean {fwd['mean_mm']:.2f} mm, p95 {fwd['p95_mm']:.2f} mm; "
        f"true face -> reconstruction mean {back['mean_mm']:.2f} mm, p95 {back['p95_mm']:.2f} mm",
        "time: " + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items()),
    ])
