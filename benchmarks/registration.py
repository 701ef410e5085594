"""Depth -> color registration speed: one NFOV unbinned depth frame to 1080p color.

    python benchmarks/registration.py [--repeats 30] [--resolution 1080P] [--depth-mode NFOV_UNBINNED]

Uses the real device calibration and the first depth frame of ../shared/samples/k4a_recording when
present, otherwise a synthetic calibration and a synthetic head-sized sphere in front of a wall.
Prints a markdown table of ms/frame (median and 90th percentile) for numpy, torch on CPU (through
the numpy kernel, and with torch ops at 1 and 2 threads) and CUDA when available; depth->color
with blocks following the surface gradient (the default) and flat.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmface4d_stream.k4a.calibration import K4aCalibration  # noqa: E402
from mmface4d_stream.k4a.raw_calibration import parse_raw_calibration  # noqa: E402
from mmface4d_stream.k4a.synthetic_calibration import synthetic_raw_calibration  # noqa: E402
from mmface4d_stream.k4a.registration import DepthToColorRegistration  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "samples" / "k4a_recording"


def load_inputs(resolution: str, depth_mode: str) -> tuple[K4aCalibration, np.ndarray, str]:
    if (SAMPLE / "calibration.json").is_file():
        raw = parse_raw_calibration((SAMPLE / "calibration.json").read_bytes())
        source = "real device calibration"
    else:
        raw = synthetic_raw_calibration()
        source = "synthetic calibration"
    cal = raw.calibration(resolution, depth_mode)
    depth = None
    if depth_mode == "NFOV_UNBINNED" and (SAMPLE / "recording.mkv").is_file():
        import av

        with av.open(str(SAMPLE / "recording.mkv")) as container:
            stream = next(s for s in container.streams.video if s.metadata.get("title") == "DEPTH")
            packet = next(p for p in container.demux(stream) if p.size)
            depth = np.frombuffer(bytes(packet), ">u2").reshape(576, 640).astype(np.uint16)
            source += ", real depth frame"
    if depth is None:
        rays, valid = cal.depth.pixel_rays()
        d = rays / np.linalg.norm(rays, axis=-1, keepdims=True)
        centre, radius = np.array([0.0, 0.0, 0.7]), 0.1
        b = d @ centre
        disc = b**2 - (centre @ centre - radius**2)
        t_sphere = np.where(disc > 0, b - np.sqrt(np.maximum(disc, 0)), np.inf)
        z = np.where(np.isfinite(t_sphere), t_sphere * d[..., 2], 1.5)
        depth = np.where(valid, np.rint(z * 1000), 0).astype(np.uint16)
        source += ", synthetic sphere frame"
    return cal, depth, source


def time_ms(fn, repeats: int, sync=None) -> tuple[float, float, float]:
    """(median wall ms, 90th percentile wall ms, median process CPU ms) per call.

    CPU time is what the call cost this process: on a machine shared with other jobs it is
    the better estimate of the wall time on an idle core (for single-threaded kernels)."""
    for _ in range(3):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        if sync:
            sync()
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        if sync:
            sync()
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    wall.sort()
    return statistics.median(wall), wall[int(0.9 * (len(wall) - 1))], statistics.median(cpu)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--resolution", default="1080P")
    parser.add_argument("--depth-mode", default="NFOV_UNBINNED")
    args = parser.parse_args()

    cal, depth, source = load_inputs(args.resolution, args.depth_mode)
    t0 = time.perf_counter()
    reg = DepthToColorRegistration(cal)
    setup_ms = (time.perf_counter() - t0) * 1000
    hc, wc = reg.color_shape
    color = np.random.default_rng(0).integers(0, 256, (hc, wc, 3), dtype=np.uint8)
    depth_t = torch.from_numpy(depth.astype(np.int32))
    color_t = torch.from_numpy(color)
    default_threads = torch.get_num_threads()

    flat = DepthToColorRegistration(cal, interpolate=False)
    rows = []
    rows.append(("depth->color", "numpy", *time_ms(lambda: reg.depth_to_color(depth), args.repeats)))
    rows.append(("depth->color, flat blocks", "numpy", *time_ms(lambda: flat.depth_to_color(depth), args.repeats)))
    rows.append(("depth->color", "torch CPU tensor (numpy kernel)", *time_ms(lambda: reg.depth_to_color(depth_t), args.repeats)))
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        rows.append((
            "depth->color",
            f"torch ops CPU, {threads} thread{'s' if threads > 1 else ''}",
            *time_ms(lambda: reg.depth_to_color(depth_t, backend="torch"), args.repeats),
        ))
    torch.set_num_threads(default_threads)
    rows.append(("color->depth", "numpy", *time_ms(lambda: reg.color_to_depth(color, depth), args.repeats)))
    rows.append(("color->depth", "torch CPU", *time_ms(lambda: reg.color_to_depth(color_t, depth_t), args.repeats)))
    if torch.cuda.is_available():
        depth_c, color_c = depth_t.cuda(), color_t.cuda()
        sync = torch.cuda.synchronize
        name = torch.cuda.get_device_name()
        rows.append(("depth->color", f"torch CUDA ({name})", *time_ms(lambda: reg.depth_to_color(depth_c), args.repeats, sync)))
        rows.append((
            "depth->color, flat blocks",
            f"torch CUDA ({name})",
            *time_ms(lambda: flat.depth_to_color(depth_c), args.repeats, sync),
        ))
        rows.append(("color->depth", f"torch CUDA ({name})", *time_ms(lambda: reg.color_to_depth(color_c, depth_c), args.repeats, sync)))

    print(f"### Registration: {args.depth_mode} {depth.shape[1]}x{depth.shape[0]} -> {args.resolution} {wc}x{hc}")
    print()
    print(f"{source}; {int((depth > 0).sum())} valid depth pixels; splat footprints up to "
          f"{reg.max_footprint}x{reg.max_footprint}; per-calibration setup {setup_ms:.0f} ms; "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"{args.repeats} repeats.")
    print()
    print("| operation | backend | median wall ms/frame | p90 wall ms/frame | median CPU ms/frame |")
    print("|---|---|---:|---:|---:|")
    for op, backend, median, p90, cpu in rows:
        print(f"| {op} | {backend} | {median:.1f} | {p90:.1f} | {cpu:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
