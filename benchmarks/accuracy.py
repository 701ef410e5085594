"""Reconstruction accuracy and speed on a noisy synthetic capture (3 cameras and 1 camera).

Synthesizes the embedded sample subject (Kinect-like depth noise, lens distortion) once into
`out/bench/accuracy/`, reconstructs it with `mmface4d reconstruct`'s code path, and prints
point-to-surface distances in mm (reconstructed vertices -> true surface, true face vertices ->
reconstructed surface) over the whole face and over the lip region (within 3.5 cm of the mouth
corners, `fit.evaluate`), the jitter of reconstruction and ground truth, and per-stage times.

    python benchmarks/accuracy.py [--frames 60] [--device cpu|cuda] [--raster off depth] [--face-model bfm
        --bfm-folder DIR] [--json]

`--raster` runs the capture once per setting of the fitter's rasterized depth term
(`FitterConfig.raster`); rows are labelled with it. "fit ms" is the fitter's mean wall time per
frame (detection excluded), single-threaded torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import torch

from mmface4d_stream.fit.evaluate import evaluate_sequence
from mmface4d_stream.fit.fitter_config import RASTER_MODES
from mmface4d_stream.pipeline.run import ReconstructOptions, reconstruct
from mmface4d_stream.pipeline.sinks import stage_latency
from mmface4d_stream.pipeline.stage_config import FitStageConfig, SourceConfig
from mmface4d_stream.render.synth import synthesize_capture

ROOT = Path(__file__).resolve().parents[1]


def capture(frames: int, seed: int):
    out = ROOT / "out" / "bench" / f"accuracy_{frames}f_seed{seed}"
    marker = out / "gt" / "cameras.json"
    if marker.is_file() and (out / "synth_2.mp4").is_file():
        return out
    synthesize_capture(out, frames=frames, cameras=3, seed=seed, name="synth", write_mkv=False)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true", help="print one JSON object (errors and stage times) only")
    parser.add_argument("--raster", nargs="+", default=["off"], choices=RASTER_MODES,
                        help="fitter.raster settings to run (default: off)")
    parser.add_argument("--face-model", choices=("template", "bfm"), default="template")
    parser.add_argument("--bfm-folder", help="folder with BFM_model_front.mat (for --face-model bfm)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    folder = capture(args.frames, args.seed)
    rows = []
    for raster in args.raster:
        for cams_label, cameras, reference in (("3 cameras", None, None), ("1 camera (centre)", [0], 0)):
            label = f"{cams_label}, raster {raster}"
            save = ROOT / "out" / "bench" / f"recon_{cams_label.split()[0]}cam_{args.device}_{args.face_model}_{raster}"
            fitter = FitStageConfig(device=args.device, raster=raster, face_model=args.face_model,
                                    bfm_folder=args.bfm_folder)
            meta = reconstruct([folder / "synth"], save,
                               ReconstructOptions(source=SourceConfig(cameras=cameras), fitter=fitter, progress=True))
            reference = meta["reference_camera"] if reference is None else reference
            error = evaluate_sequence(save, folder / "gt", reference_device=reference)
            rows.append((label, error, meta))
    if args.json:
        print(json.dumps({label: dict(error.to_dict(), stage_latency_ms=stage_latency(meta), lost_frames=len(meta["frames_lost_face"]))
                          for label, error, meta in rows}))
        return
    print(f"\nnoisy synthetic capture, {args.frames} frames, device {args.device}, {os.cpu_count()} CPU cores, "
          f"torch threads {torch.get_num_threads()}\n")
    print("| cameras | region | recon→GT mean mm | recon→GT p95 mm | GT→recon mean mm | GT→recon p95 mm | lost frames |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for label, error, meta in rows:
        for region, fwd, bwd in (("face", error.recon_to_gt, error.gt_to_recon),
                                 ("mouth", error.mouth_recon_to_gt, error.mouth_gt_to_recon)):
            if fwd is None:
                continue
            print(f"| {label} | {region} | {fwd.mean_mm:.2f} | {fwd.p95_mm:.2f} | {bwd.mean_mm:.2f} | {bwd.p95_mm:.2f} | "
                  f"{len(meta['frames_lost_face'])} |")
    print("\n| cameras | jitter recon mm/frame² | jitter ground truth mm/frame² | fit ms/frame |")
    print("|---|---:|---:|---:|")
    for label, error, meta in rows:
        fit = stage_latency(meta).get("fit", {}).get("mean", float("nan"))
        print(f"| {label} | {error.jitter_recon_mm:.3f} | {error.jitter_gt_mm:.3f} | {fit:.1f} |")
    print("\n| cameras | stage | mean ms | p50 ms | p95 ms | frames/s (from mean) |")
    print("|---|---|---:|---:|---:|---:|")
    for label, _, meta in rows:
        for stage, t in stage_latency(meta).items():
            print(f"| {label} | {stage} | {t['mean']:.1f} | {t['p50']:.1f} | {t['p95']:.1f} | {1e3 / t['mean']:.1f} |")
    print("\n(landmarks: MediaPipe on every camera of a frame; fit: the fitter alone, detection excluded)")

if __name__ == "__main__":
    main()
