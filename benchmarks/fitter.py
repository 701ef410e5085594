"""Face fitter speed: frames per second for 1 and 3 cameras, BFM-size and template-size models.

Synthetic BFM-format models (the BFM itself is licensed and not shipped) at the BFM front size
(35,709 vertices, 80 identity + 64 expression modes) and at the built-in template's size (6,996
vertices, 3 + 12 modes), a 1920x1080 Kinect-like rig at 0.66 m, depth rendered from the mesh.
A stream of frames with a moving head and changing expression is fitted with `FaceFitter.process`
(warm-started); the first `--warmup` frames (cold start, identity estimation) are excluded from
the steady-state figure and reported separately. Landmark detection is not included.

    python benchmarks/fitter.py [--frames 30] [--threads 1] [--device cpu|cuda] [--no-offsets]

Prints a markdown table: wall-clock frames/s (median), and the process CPU time per frame, which
depends less on other processes sharing the machine. On a shared machine figures vary with the
load: report what you got.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmface4d_stream.fit.fitter import FaceFitter, FitterConfig  # noqa: E402
from mmface4d_stream.fit.synthetic import frontal_pose, make_rig, synthetic_face_model, synthetic_frame  # noqa: E402

MODELS = {
    "bfm-size (35709 v, 80+64 modes)": dict(n_vertices=35709, n_id=80, n_exp=64, n_landmarks=64),
    "template-size (6996 v, 3+12 modes)": dict(n_vertices=6996, n_id=3, n_exp=12, n_landmarks=64),
}


def run(model_kwargs: dict, n_cameras: int, n_frames: int, warmup: int, device: str, offsets: bool) -> dict:
    model = synthetic_face_model(seed=0, **model_kwargs)
    rig = make_rig(n_cameras, distortion=(0.5, -2.5, 1.5, 0.4, -2.3, 1.4, 1e-4, -2e-4))
    rng = np.random.default_rng(0)
    alpha = (rng.normal(size=model.n_id) * 0.8).astype(np.float32)
    frames = []
    for k in range(n_frames):
        beta = (np.sin(0.3 * k + np.arange(model.n_exp)) * 0.8).astype(np.float32)
        r, t = frontal_pose(10 + 5 * np.sin(0.2 * k), -5 + 3 * np.cos(0.15 * k), 2, (0.01, -0.01 + 0.001 * k, 0.66))
        frames.append(synthetic_frame(model, rig, r, t, alpha, beta, frame_index=k))
    cfg = FitterConfig(offsets=offsets, identity_frames=warmup)
    fitter = FaceFitter(model, cfg, device=device)
    times, cpu_times, errors, iterations = [], [], [], []
    for obs, gt in frames:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        res = fitter.process(obs)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        errors.append(1e3 * float(np.linalg.norm(res.vertices - gt, axis=1).mean()))
        iterations.append(res.iterations)
    steady = np.array(times[warmup:])
    return {
        "fps": 1.0 / float(np.median(steady)),
        "ms": 1e3 * float(np.median(steady)),
        "p90_ms": 1e3 * float(np.percentile(steady, 90)),
        "cpu_ms": 1e3 * float(np.median(cpu_times[warmup:])),
        "warmup_ms": 1e3 * float(np.mean(times[:warmup])),
        "iters": float(np.mean(iterations[warmup:])),
        "err_mm": float(np.mean(errors[warmup:])),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=30, help="frames per configuration (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="frames excluded from the steady state (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: both when CUDA exists)")
    parser.add_argument("--no-offsets", action="store_true", help="disable the per-vertex offset step")
    parser.add_argument("--cameras", type=int, nargs="+", default=[1, 3])
    args = parser.parse_args(argv)
    if args.frames <= args.warmup:
        parser.error("--frames must exceed --warmup")
    torch.set_num_threads(args.threads)
    devices = [args.device] if args.device else (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    print(f"torch {torch.__version__}, {args.threads} CPU thread(s), offsets {'off' if args.no_offsets else 'on'}, "
          f"{args.frames} frames ({args.warmup} warm-up frames excluded)\n")
    print("| model | cameras | device | frames/s | median ms | p90 ms | CPU ms | warm-up ms/frame | iterations | mean vertex error mm |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for device in devices:
        for name, kwargs in MODELS.items():
            for n_cam in args.cameras:
                r = run(kwargs, n_cam, args.frames, args.warmup, device, not args.no_offsets)
                print(f"| {name} | {n_cam} | {device} | {r['fps']:.1f} | {r['ms']:.1f} | {r['p90_ms']:.1f} | {r['cpu_ms']:.1f} | "
                      f"{r['warmup_ms']:.0f} | {r['iters']:.1f} | {r['err_mm']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
