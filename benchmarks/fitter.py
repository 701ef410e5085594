"""Face fitter speed: frames/s per stream and in total for batches of B streams, CPU or CUDA.

Synthetic BFM-format models (the BFM itself is licensed and not shipped) at the BFM front size
(35,709 vertices, 80 identity + 64 expression modes) and at the built-in template's size (6,996
vertices, 3 + 12 modes), a 1920x1080 Kinect-like rig at 0.66 m with lens distortion, depth
rendered from the mesh. B streams (each a moving head with changing expression, started at a
different phase of the motion) are fitted together by `MultiStreamFitter.process`; the first
`--warmup` frames of each stream (cold start, identity estimation, CUDA graph capture) are excluded
from the steady-state figures. Landmark detection is not included.

    python benchmarks/fitter.py [--batch 1 8] [--cameras 1 3] [--models bfm template]
                                [--device cpu|cuda] [--legacy] [--json] [--frames 30]

Per configuration: frames/s per stream and in total (wall clock over the steady frames), process
CPU ms per frame, device -> host reads per steady frame (counted with `fit.host_reads`), aten ops
per frame, mean vertex error against the ground truth; on CUDA also kernel launches per frame
(profiler) and both eager and graph-replayed rates. `--legacy` adds the fitter of main d72b0a6 at
B = 1 for comparison (`benchmarks/legacy_fitter.py`). On a shared machine figures vary with the
load: report what you got, with the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmface4d_stream.fit.fitter_config import RASTER_MODES, FitterConfig  # noqa: E402
from mmface4d_stream.fit.host_reads import AtenOpCounter, HostReadCounter  # noqa: E402
from mmface4d_stream.fit.multi import MultiStreamFitter  # noqa: E402
from mmface4d_stream.fit.synthetic import frontal_pose, make_rig, synthetic_face_model, synthetic_frame  # noqa: E402

MODELS = {
    "bfm": ("bfm-size (35709 v, 80+64 modes)", dict(n_vertices=35709, n_id=80, n_exp=64, n_landmarks=64)),
    "template": ("template-size (6996 v, 3+12 modes)", dict(n_vertices=6996, n_id=3, n_exp=12, n_landmarks=64)),
}
DISTORTION = (0.5, -2.5, 1.5, 0.4, -2.3, 1.4, 1e-4, -2e-4)
PHASES = 8  # distinct starting phases of the synthetic motion across streams


def _frame(model, n_cameras: int, k: int, with_color: bool = False):
    rig = make_rig(n_cameras, distortion=DISTORTION)
    alpha = (np.random.default_rng(0).normal(size=model.n_id) * 0.8).astype(np.float32)
    beta = (np.sin(0.3 * k + np.arange(model.n_exp)) * 0.8).astype(np.float32)
    r, t = frontal_pose(10 + 5 * np.sin(0.2 * k), -5 + 3 * np.cos(0.15 * k), 2, (0.01, -0.01 + 0.001 * k, 0.66))
    return synthetic_frame(model, rig, r, t, alpha, beta, frame_index=k, with_color=with_color)


def make_frames(model, n_cameras: int, n_frames: int, workers: int | None = None, with_color: bool = False):
    """n_frames + PHASES - 1 consecutive synthetic frames [(FrameObservation, gt vertices)], rendered
    by `workers` processes (default: every core); with_color: with colour images (`raster depth+color`)."""
    from concurrent.futures import ProcessPoolExecutor

    ks = range(n_frames + PHASES - 1)
    workers = workers or os.cpu_count() or 1
    if workers <= 1:
        return [_frame(model, n_cameras, k, with_color) for k in ks]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_frame, [model] * len(ks), [n_cameras] * len(ks), ks, [with_color] * len(ks)))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _profiled(step, device: str):
    """torch.profiler's events of one call of step() on CUDA (None on the CPU or without CUPTI)."""
    if not device.startswith("cuda"):
        return None
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            step()
            _sync(device)
    except RuntimeError as exc:  # no CUPTI on this machine
        print(f"no CUDA profile: {exc}", file=sys.stderr)
        return None
    return prof.key_averages()


def _kernel_launches(step, device: str) -> float | None:
    """CUDA kernel launches (runtime/driver launch calls, graph launches included) in one call of step()."""
    events = _profiled(step, device)
    if events is None:
        return None
    names = ("cudaLaunchKernel", "cuLaunchKernel", "cudaGraphLaunch", "cudaLaunchKernelExC", "cuLaunchKernelEx")
    return float(sum(e.count for e in events if any(e.key.startswith(n) for n in names)))


def _device_profile(step, device: str, top: int = 12) -> list[dict] | None:
    """The operators with the most device time in one call of step() (CUDA only)."""
    events = _profiled(step, device)
    if events is None:
        return None
    events = [e for e in events if getattr(e, "self_device_time_total", 0) > 0]
    events.sort(key=lambda e: e.self_device_time_total, reverse=True)
    total = sum(e.self_device_time_total for e in events)
    rows = [{"name": e.key[:60], "calls": e.count, "device_ms": e.self_device_time_total / 1e3} for e in events[:top]]
    return [{"name": "(all)", "calls": sum(e.count for e in events), "device_ms": total / 1e3}] + rows


class _LegacyStreams:
    """The d72b0a6 fitter behind `MultiStreamFitter`'s slot interface (one stream), so the same
    timing loop measures both."""

    cuda_graphs = False
    timings: dict = {}

    def __init__(self, model, cfg: FitterConfig, device: str):
        from benchmarks.legacy_fitter import legacy_fitter_class

        cls = legacy_fitter_class()
        legacy_type = sys.modules[cls.__module__].FitterConfig
        # Settings newer than the legacy fitter (e.g. raster) are left out.
        legacy_cfg = legacy_type(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(legacy_type)})
        self._fitter = cls(model, legacy_cfg, device=device)

    def open_stream(self) -> int:
        return 0

    def process(self, frames: dict) -> dict:
        return {slot: self._fitter.process(obs) for slot, obs in frames.items()}


def run_batch(model, frames, batch: int, device: str, warmup: int, n_frames: int, offsets: bool,
              mode: str = "graph", profile: bool = False, raster: str = "off", hurried: bool = False) -> dict:
    """Fit `batch` streams over n_frames; steady-state figures after `warmup` frames.

    mode: "graph" (CUDA graphs where the device is CUDA), "eager", or "legacy" (the d72b0a6
    fitter, one stream). hurried: every frame after the warm-up is fitted the fast way
    (`FrameObservation.hurry`: what the live policy does with late frames), the worst case.
    """
    cfg = FitterConfig(offsets=offsets, identity_frames=warmup, raster=raster)
    if mode == "legacy":
        if batch != 1:
            raise ValueError("the legacy fitter fits one stream")
        fitter = _LegacyStreams(model, cfg, device)
    else:
        fitter = MultiStreamFitter(model, cfg, device=device, cuda_graphs=mode == "graph")
    slots = [fitter.open_stream() for _ in range(batch)]
    phase = [j % PHASES for j in range(batch)]
    times, cpu, errors, iters = [], [], [], []
    reads = ops = launches = device_profile = None
    phases: dict[str, float] = {}

    def step(k):
        hurry = hurried and k >= warmup
        return fitter.process({s: dataclasses.replace(frames[k + phase[j]][0], hurry=hurry) if hurry else frames[k + phase[j]][0]
                               for j, s in enumerate(slots)})

    for k in range(n_frames):
        if k == warmup + 1:  # a steady frame, already captured: count what it does
            with HostReadCounter() as counter:
                step(k - 1)
            reads = counter.total
            with AtenOpCounter() as op_counter:
                step(k - 1)
            ops = op_counter.total
            launches = _kernel_launches(lambda: step(k - 1), device)
            device_profile = _device_profile(lambda: step(k - 1), device) if profile else None
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        res = step(k)
        _sync(device)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        if k >= warmup:
            for name, ms in fitter.timings.items():
                phases[name] = phases.get(name, 0.0) + ms / (n_frames - warmup)
            for j, s in enumerate(slots):
                errors.append(1e3 * float(np.linalg.norm(res[s].vertices - frames[k + phase[j]][1], axis=1).mean()))
                iters.append(res[s].iterations)
    steady = float(np.sum(times[warmup:]))
    n_steady = n_frames - warmup
    return {
        "batch": batch,
        "fps_per_stream": n_steady / steady,
        "fps_total": batch * n_steady / steady,
        "cpu_ms_per_frame": 1e3 * float(np.sum(cpu[warmup:])) / (batch * n_steady),
        "host_reads_per_step": reads,
        "aten_ops_per_frame": None if ops is None else ops / batch,
        "kernel_launches_per_frame": None if launches is None else launches / batch,
        "iterations": float(np.mean(iters)),
        "mean_vertex_error_mm": float(np.mean(errors)),
        "graphs_captured": len(fitter.graphs) if fitter.cuda_graphs else 0,
        "graph_failures": sorted(set(fitter.graphs.failures.values())) if fitter.cuda_graphs else [],
        "step_ms": phases,  # per batch step: host prepare/collate, launch, device, read-back + results
        "device_profile": device_profile,
    }


def _phases(step_ms: dict) -> str:
    if not step_ms:
        return "–"
    prep = step_ms.get("prepare_ms", 0.0) + step_ms.get("collate_ms", 0.0)
    return f"{prep:.1f} / {step_ms.get('device_ms', 0.0):.1f} / {step_ms.get('finish_ms', 0.0):.1f}"


def _fmt(v, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="Example: python benchmarks/fitter.py --batch 1 8 --cameras 3 --models bfm")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="streams solved together (default 1 8)")
    parser.add_argument("--cameras", type=int, nargs="+", default=[3], choices=[1, 2, 3], help="cameras (default 3)")
    parser.add_argument("--models", nargs="+", default=["bfm", "template"], choices=sorted(MODELS))
    parser.add_argument("--frames", type=int, default=30, help="frames per stream (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="frames excluded from the steady state (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: both when CUDA exists)")
    parser.add_argument("--no-offsets", action="store_true", help="disable the per-vertex offset step")
    parser.add_argument("--hurried", action="store_true",
                        help="also time every steady frame fitted the fast way (the live policy's late frames)")
    parser.add_argument("--legacy", action="store_true", help="also time the fitter of main d72b0a6 at B = 1")
    parser.add_argument("--no-eager", action="store_true", help="on CUDA, skip the eager (no graph) rows")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--raster", nargs="+", default=["off"], choices=RASTER_MODES,
                        help="fitter.raster settings (default off); the mode column names it when not off")
    parser.add_argument("--profile", action="store_true",
                        help="on CUDA, also list the operators with the most device time in one steady step")
    args = parser.parse_args(argv)
    if args.frames <= args.warmup + 1:
        parser.error("--frames must exceed --warmup + 1")
    if any(b < 1 for b in args.batch):
        parser.error("--batch sizes must be positive")
    if args.device and args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    torch.set_num_threads(args.threads)
    devices = [args.device] if args.device else (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    machine = {
        "torch": torch.__version__, "threads": args.threads, "cpu_cores": os.cpu_count(), "platform": platform.platform(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "frames": args.frames, "warmup": args.warmup, "offsets": not args.no_offsets,
    }
    rows = []
    # With --json the table goes to stderr as rows finish (a killed run still shows what it measured).
    out = sys.stderr if args.json else sys.stdout
    print(f"torch {torch.__version__}, {args.threads} CPU thread(s) of {os.cpu_count()}, GPU: {machine['gpu']}, "
          f"offsets {'off' if args.no_offsets else 'on'}, {args.frames} frames per stream "
          f"({args.warmup} warm-up frames excluded)\n", file=out)
    print("| model | cameras | device | mode | B | frames/s per stream | frames/s total | CPU ms/frame | "
          "host reads/step | aten ops/frame | kernel launches/frame | iterations | mean vertex error mm | "
          "step ms: host prep / device / finish |", file=out)
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|", file=out)
    # Every capture is rendered (in forked worker processes) before any fit: the raster term opens
    # an OpenGL context, which a forked process must not inherit.
    models = {key: synthetic_face_model(seed=0, **MODELS[key][1]) for key in args.models}
    with_color = "depth+color" in args.raster
    captures = {(key, n_cam): make_frames(models[key], n_cam, args.frames, with_color=with_color)
                for key in args.models for n_cam in args.cameras}
    for key in args.models:
        name, _ = MODELS[key]
        model = models[key]
        for n_cam in args.cameras:
            frames = captures[key, n_cam]
            for device in devices:
                modes = ["graph", "eager"] if device.startswith("cuda") and not args.no_eager else \
                    (["graph"] if device.startswith("cuda") else ["eager"])
                jobs = [("legacy", 1)] if args.legacy else []
                jobs += [(mode, b) for b in args.batch for mode in modes]
                jobs = [(mode, b, raster, False) for raster in args.raster for mode, b in jobs
                        if mode != "legacy" or raster == "off"]
                jobs += [(mode, b, raster, True) for mode, b, raster, _ in jobs if mode != "legacy" and args.hurried]
                for mode, b, raster, hurried in jobs:
                    r = run_batch(model, frames, b, device, args.warmup, args.frames, not args.no_offsets,
                                  mode=mode, profile=args.profile and mode != "legacy", raster=raster, hurried=hurried)
                    r.update(model=key, cameras=n_cam, device=device, mode=mode, raster=raster, hurried=hurried)
                    mode = mode if raster == "off" else f"{mode}, raster {raster}"
                    mode = f"{mode}, hurried" if hurried else mode
                    rows.append(r)
                    print(f"| {name} | {n_cam} | {device} | {mode} | {b} | {r['fps_per_stream']:.1f} | "
                          f"{r['fps_total']:.1f} | {r['cpu_ms_per_frame']:.2f} | {_fmt(r['host_reads_per_step'], 'd')} | "
                          f"{_fmt(r['aten_ops_per_frame'], '.0f')} | {_fmt(r['kernel_launches_per_frame'], '.1f')} | "
                          f"{r['iterations']:.1f} | {r['mean_vertex_error_mm']:.3f} | {_phases(r['step_ms'])} |",
                          file=out, flush=True)
                    for p in r.get("device_profile") or []:
                        print(f"|   | device time: {p['name']} | {p['calls']} calls | {p['device_ms']:.2f} ms |", file=out)
    if args.json:
        print(json.dumps({"machine": machine, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
