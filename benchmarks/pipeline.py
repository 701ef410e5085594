#!/usr/bin/env python
"""The Ray graph end to end: frames/s, per-stage latency, memory over long runs, stream latency,
and Ray compiled graphs against plain actor calls. Prints markdown tables.

    python benchmarks/pipeline.py                      # everything, short settings
    python benchmarks/pipeline.py --memory-frames 300 1800   # the full memory check (slow on 2 cores)
    python benchmarks/pipeline.py --live --json out/bench/live.json   # the live path (20 s replays)
    python benchmarks/pipeline.py --live --live-runs 1cam   # only its 1-camera run
    python benchmarks/pipeline.py --live --live-runs 1cam --steal 0.2   # with 20 % of each core taken

Captures are synthesized once into out/bench/ (reused on later runs). The machine may be shared:
numbers are what this run measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from graphs.config import load_config  # noqa: E402
from graphs.frame_graph import SequenceJob, SequencePipeline  # noqa: E402
from graphs.runner import ensure_ray  # noqa: E402
from mmface4d_stream.errors import InputError  # noqa: E402
from mmface4d_stream.pipeline.latency_budget import latency_stats  # noqa: E402
from run_offline import parse_overrides  # noqa: E402

OUT = Path("out/bench")


def capture(frames: int, cameras: int):
    """The synthetic capture (dataset files, MKVs, ground truth) of `frames` frames, made once."""
    from mmface4d_stream.render.synth import synthesize_capture

    return synthesize_capture(OUT / f"capture_{frames}x{cameras}", frames=frames, cameras=cameras, seed=1,
                              name="bench", write_mkv=True, progress=False, reuse=True)


class ProcessCpu:
    """CPU seconds (user + system) per process of this run's Ray (the driver and its descendants:
    raylet, GCS, actor workers) between `start()` (the capture clock) and `stop()`, sampled every
    0.25 s (a process's last quarter second before it ends is missed). Processes are named by their
    title: an actor's class (`ray::FitActor.fit` -> FitActor), else the program."""

    def __init__(self):
        import psutil

        self.me = psutil.Process()
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.names: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ignore: set[int] = set()  # pids not counted (`cpu_steal`'s busy loops)

    @staticmethod
    def _name(proc, is_driver: bool) -> str:
        if is_driver:
            return "driver"
        cmd = proc.cmdline() or [proc.name()]
        if cmd[0].startswith("ray::"):
            return cmd[0][5:].split(".")[0]
        program = next((Path(c).name for c in cmd if "gcs_server" in c or "raylet" in c), None)
        return program or "ray (other: log monitor, agents)"

    def _sample(self, into: dict[int, float]) -> None:
        for proc in [self.me] + self.me.children(recursive=True):
            if proc.pid in self.ignore:
                continue
            try:
                times = proc.cpu_times()
                into[proc.pid] = times.user + times.system
                if proc.pid not in self.names:
                    self.names[proc.pid] = self._name(proc, proc.pid == self.me.pid)
            except Exception:  # gone meanwhile
                pass

    def start(self, _startup: dict | None = None) -> None:
        self.started = time.perf_counter()
        self._sample(self.first)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self._sample(self.last)

    def stop(self) -> dict[str, float]:
        """CPU seconds per process name over the run (its length in `self.seconds`)."""
        self.seconds = time.perf_counter() - self.started if self._thread is not None else 0.0
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        totals: dict[str, float] = {}
        for pid, seconds in self.last.items():
            name = self.names[pid]
            totals[name] = totals.get(name, 0.0) + seconds - self.first.get(pid, 0.0)
        return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


class PeakMemory:
    """Peak resident memory (MiB) of the driver plus every Ray actor process, sampled every 0.2 s."""

    def __init__(self):
        import psutil

        self.psutil = psutil
        self.peaks: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        for proc in self.psutil.process_iter(["pid", "cmdline", "memory_info"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if proc.pid == self.psutil.Process().pid or cmd.startswith("ray::") and any(
                    name in cmd for name in ("SourceActor", "LandmarkActor", "FitActor", "SmoothActor", "NutActor")):
                rss = (proc.info["memory_info"].rss if proc.info["memory_info"] else 0) / 2**20
                self.peaks[proc.pid] = max(self.peaks.get(proc.pid, 0.0), rss)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self._sample()
            except Exception:
                pass

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def total_mib(self) -> float:
        return sum(self.peaks.values())


def run_graph(prefix_or_mkvs, overrides: dict, name: str):
    config = load_config(None, {"ray.frame_timeout_s": 120.0, **overrides})
    job = SequenceJob(list(prefix_or_mkvs), str(OUT / "meshes" / name), name)
    result = SequencePipeline(job, config, progress=False).run()
    if not result.ok:
        raise RuntimeError(f"{name}: {result.error}")
    return result.meta


def error_mm(meta: dict, cap, name: str, device: int | None = None) -> str:
    """Mean reconstruction → ground-truth distance (mm). device: the synthetic device of a one-camera
    run (its meshes are in that camera's frame); multi-camera runs use the rig's reference camera."""
    from mmface4d_stream.fit.evaluate import evaluate_sequence

    reference = device if device is not None else meta["reference_camera"]
    try:
        error = evaluate_sequence(OUT / "meshes" / name, cap.gt_mesh_prefix.parent, reference_device=reference)
        return f"{error.recon_to_gt.mean_mm:.2f}"
    except Exception as exc:
        return f"– ({str(exc)[:40]})"


def stage_rows(label: str, meta: dict, error: str = "–") -> list[str]:
    lat = meta["stage_latency_ms"]
    cells = []
    for stage in ("landmarks", "fit", "smooth", "encode", "end_to_end"):
        s = lat.get(stage)
        cells.append(f"{s['p50']:.0f} / {s['p95']:.0f}" if s else "–")
    overall = meta["frames_out"] / meta["seconds"]
    steady = meta.get("steady_frames_per_second")
    first = meta.get("first_frame_seconds")
    if meta["policy"] == "live":
        fitted = meta["frames_out"] - len(meta["frames_dropped"])
        label += f" ({fitted} fitted = {fitted / meta['seconds']:.1f}/s)"
    return [f"| {label} | {meta['frames_out']} | {first if first is not None else '–'} | "
            f"{steady if steady is not None else '–'} | {overall:.2f} | {len(meta['frames_dropped'])} | "
            + " | ".join(cells) + f" | {error} |"]


def bench_throughput(frames: int, live_loops: int = 10) -> None:
    cap = capture(frames, 3)
    print(f"\n### End to end, {frames}-frame synthetic capture (offline unless noted)\n")
    print("| run | frames | first frame s | steady frames/s | overall frames/s | dropped | landmarks p50/p95 ms | "
          "fit | smooth | encode | source→encoded | mean error mm |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    mkvs = [str(p) for p in cap.mkv_paths]
    rows = [
        ("3 cameras, dataset files", [str(cap.sequence_prefix)], {"source.cameras": [0, 1, 2]}),
        ("3 cameras, MKV recordings", mkvs, {}),
        ("3 cameras, dataset files, smoothed vertices", [str(cap.sequence_prefix)],
         {"source.cameras": [0, 1, 2], "smoother.enabled": True}),
        ("1 camera, dataset files", [str(cap.sequence_prefix)], {"source.cameras": [1]}, 1),
        ("1 camera, MKV recording", [mkvs[1]], {}, 1),
        (f"1 camera MKV, live-paced 30 fps, {live_loops}× looped", [mkvs[1]],
         {"policy.mode": "live", "source.pace": True, "smoother.enabled": True, "policy.max_inflight": 2,
          "policy.max_latency_ms": 300.0, "source.loop": live_loops}),
    ]
    for label, inputs, overrides, *device in rows:
        try:
            name = label.replace(",", "").replace(" ", "_")
            meta = run_graph(inputs, overrides, name)
            error = error_mm(meta, cap, name, *device) if overrides.get("policy.mode") != "live" else "–"
            for line in stage_rows(label, meta, error):
                print(line, flush=True)
        except Exception as exc:
            print(f"| {label} | failed: {str(exc).splitlines()[0][:120]} | | | | | | | | | | |", flush=True)


def live_rig_file(cap) -> str:
    """A rig file for the capture, as a previous session's `_rig.json` (calibrated once, then reused)."""
    from mmface4d_stream.pipeline.sources import open_source
    from mmface4d_stream.pipeline.rig_setup import calibrate_rig

    path = OUT / f"rig_{cap.out_dir.name}.json"
    if not path.is_file():
        calibrate_rig(open_source([str(p) for p in cap.mkv_paths])).save(path)
    return str(path)


def _p(figures: dict | None, key: str) -> str:
    s = (figures or {}).get(key)
    return f"{s['p50']:.0f} / {s['p95']:.0f}" if s else "–"


LIVE_RUNS = ("3cam-rig", "3cam-calibrated", "3cam-one-actor", "1cam")


# One process per core that keeps the core busy for `fraction` of every 20 ms (sys.argv[1]).
_BUSY_LOOP = """
import sys, time
busy = float(sys.argv[1]) * 0.02
while True:
    start = time.perf_counter()
    while time.perf_counter() - start < busy:
        pass
    time.sleep(max(0.0, 0.02 - (time.perf_counter() - start)))
"""


@contextlib.contextmanager
def cpu_steal(fraction: float):
    """While inside: one busy-loop process per core taking `fraction` (0..1) of it, a stand-in for
    a slower or busier machine (0: nothing started). Yields their pids; they are killed on leaving."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the stolen fraction must be in [0, 1), got {fraction}")
    thieves = [] if fraction == 0 else [subprocess.Popen([sys.executable, "-c", _BUSY_LOOP, str(fraction)])
                                         for _ in range(os.cpu_count() or 1)]
    try:
        yield {thief.pid for thief in thieves}
    finally:
        for thief in thieves:
            thief.kill()
            thief.wait()


def bench_live(seconds: float = 20.0, frames: int = 150, runs: tuple[str, ...] = LIVE_RUNS,
               settings: dict | None = None, steal: float = 0.0) -> list[dict]:
    """The live path (`configs/live.yaml`: paced replay, newest frame only, smoother, thumbnails,
    publishing) on synthetic recordings looped to `seconds`: 3 cameras with a rig file, 3 cameras
    calibrating the rig, 3 cameras with one landmark actor for all, 1 camera (`runs`: which of
    `LIVE_RUNS`; `settings`: config overrides for every run; `steal`: the fraction of every core
    busy-loop processes take during the runs, `cpu_steal`). Also the CPU each process spent from
    the clock's start to the end, per frame (the stages' cost: where a frame's CPU goes; the
    busy loops are not among them). Returns the figures."""
    cap = capture(frames, 3)
    mkvs = [str(p) for p in cap.mkv_paths]
    loops = max(1, -(-int(seconds * 30) // frames))
    rig = live_rig_file(cap)
    live = {"source.loop": loops, "publish.url": "tcp://127.0.0.1:*", **(settings or {})}
    rows = [
        ("3 cameras, rig file", mkvs, {"fitter.rig": rig}),
        ("3 cameras, rig calibrated at start", mkvs, {}),
        ("3 cameras, rig file, one landmark actor", mkvs, {"fitter.rig": rig, "landmarks.per_camera": False}),
        ("1 camera", [mkvs[1]], {}),
    ]
    rows = [row for key, row in zip(LIVE_RUNS, rows) if key in runs]
    print(f"\n### Live path: paced replay of {loops} × {frames} frames ({loops * frames / 30:.0f} s at 30 fps), "
          f"configs/live.yaml{''.join(f', {k}={v}' for k, v in (settings or {}).items())}"
          f"{f', {steal:.0%} of every core taken by busy loops' if steal else ''}\n")
    print("| run | frames | ready s (rig s) | first mesh after clock s | first mesh: frame, latency ms | fitted | hurried | "
          "dropped: source busy / too old / fitter busy | dropped % | steady fitted/s | capture→publish p50/p95 ms | "
          "landmarks | fit | smooth | waiting | over budget |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    results = []
    cpu_rows = []
    for label, inputs, overrides in rows:
        name = "live_" + label.replace(",", "").replace(" ", "_")
        config = load_config("live", {"ray.frame_timeout_s": 120.0, **live, **overrides})
        job = SequenceJob(list(inputs), str(OUT / "meshes" / name), name)
        cpu = ProcessCpu()
        with cpu_steal(steal) as thieves:
            cpu.ignore |= thieves
            result = SequencePipeline(job, config, progress=False, on_ready=cpu.start).run()
        cpu_s = cpu.stop()
        meta = result.meta
        if not result.ok:
            print(f"| {label} | failed: {str(result.error).splitlines()[0][:120]} |" + " |" * 14, flush=True)
            continue
        budget = meta["latency_budget"]
        drops = meta["drops_by_cause"]
        startup = meta["startup"]
        rig_s = startup["rig"].get("seconds")
        dropped = len(meta["frames_dropped"])
        stages = budget["stages"]
        print(f"| {label} | {meta['frames_in']} | {startup['ready_s']:.1f}{f' ({rig_s:.1f})' if rig_s else ''} | "
              f"{meta['first_mesh_after_clock_s']} | {meta['first_mesh']['frame']}, {meta['first_mesh']['latency_ms']:.0f} | "
              f"{meta['frames_fitted']} | {meta.get('frames_hurried', 0)} | {drops['source_busy']} / "
              f"{drops['too_old']} / {drops['fitter_busy']} | {100 * dropped / meta['frames_in']:.1f} | "
              f"{meta['steady_frames_per_second']} | {_p(budget, 'capture_to_publish_ms')} | "
              f"{_p(stages, 'landmarks')} | {_p(stages, 'fit')} | {_p(stages, 'smooth')} | {_p(stages, 'waiting')} | "
              f"{budget['over'] or 'within'} |", flush=True)
        cpu_rows.append((label, meta["frames_in"], meta["frames_fitted"], cpu.seconds, cpu_s))
        results.append({"run": label, "inputs": list(inputs), "overrides": overrides, "load_at_end": os.getloadavg(),
                        "cpu_seconds_by_process": {k: round(v, 3) for k, v in cpu_s.items()},
                        "cpu_ms_per_fitted_frame": round(1e3 * sum(cpu_s.values()) / max(1, meta["frames_fitted"]), 1),
                        **{k: meta.get(k) for k in ("frames_in", "frames_fitted", "frames_dropped", "drops_by_cause",
                                                     "frames_hurried", "first_frame_seconds", "first_mesh_after_clock_s", "first_mesh",
                                                     "steady_frames_per_second", "startup", "latency_budget",
                                                     "stage_latency_ms")}})
    for label, frames_in, fitted, run_s, cpu_s in cpu_rows:
        print(f"\nCPU from the clock's start to the end, {label} ({frames_in} frame sets in {run_s:.1f} s, "
              f"{fitted} fitted; load at end {os.getloadavg()[0]:.1f}):\n")
        print("| process | CPU s | ms per frame set in | ms per fitted frame | cores |")
        print("|---|---:|---:|---:|---:|")
        for process, seconds in list(cpu_s.items()) + [("total", sum(cpu_s.values()))]:
            if seconds >= 0.05 or process == "total":
                print(f"| {process} | {seconds:.1f} | {1e3 * seconds / max(1, frames_in):.1f} | "
                      f"{1e3 * seconds / max(1, fitted):.1f} | {seconds / max(run_s, 1e-9):.2f} |", flush=True)
    return results


def bench_folder(sequences: int = 4, frames: int = 30) -> None:
    """A folder of short 3-camera sequences (MMFace4D sentences are a few seconds long) run one after
    another in one lane (actors started once): each sequence calibrating its rig, then all given
    the rig file the first one saved (one recording session, `--set fitter.rig=...`)."""
    from graphs.runner import run_jobs

    cap = capture(frames, 3)
    print(f"\n### A folder of {sequences} sequences × {frames} frames, 3 cameras, dataset files, one lane\n")
    print("| rig | sequence | first frame s | steady frames/s | overall frames/s |")
    print("|---|---|---:|---:|---:|")
    rig_file = None
    for rig_label in ("calibrated per sequence", "given (fitter.rig)"):
        config = load_config("3-cam", {"ray.frame_timeout_s": 120.0, "ray.max_pipelines": 1, "fitter.rig": rig_file})
        jobs = [SequenceJob([str(cap.sequence_prefix)], str(OUT / "meshes" / f"folder_{k}"), f"seq{k}")
                for k in range(sequences)]
        start = time.perf_counter()
        results = run_jobs(jobs, config, progress=False, skip_finished=False)
        wall = time.perf_counter() - start
        total = sum(r.meta.get("frames_written", 0) for r in results if r is not None)
        for r in results:
            m = r.meta
            print(f"| {rig_label} | {r.job.name} | {m.get('first_frame_seconds')} | "
                  f"{m.get('steady_frames_per_second')} | {m['frames_out'] / m['seconds']:.2f} |")
        print(f"| {rig_label} | all: {total} frames in {wall:.1f} s | | | {total / wall:.2f} |", flush=True)
        rig_file = f"{jobs[0].save_path}_rig.json"


def bench_memory(frame_counts: list[int]) -> None:
    cap = capture(30, 1)
    print("\n### Peak resident memory (driver + actor processes), 1 camera looped\n")
    print("| frames | seconds | frames/s | peak RSS MiB (sum over processes) |")
    print("|---:|---:|---:|---:|")
    for count in frame_counts:
        loops = -(-count // 30)
        with PeakMemory() as memory:
            meta = run_graph([str(cap.sequence_prefix)], {"source.loop": loops, "source.max_frames": count},
                             f"memory_{count}")
        print(f"| {meta['frames_out']} | {meta['seconds']:.0f} | {meta['frames_out'] / meta['seconds']:.2f} | "
              f"{memory.total_mib:.0f} |", flush=True)


def bench_stream(subscribers: int = 8, messages: int = 300, n_vertices: int = 6996) -> None:
    from mmface4d_stream.stream.publisher import MeshPublisher
    from mmface4d_stream.stream.schema import MeshMessage
    from mmface4d_stream.stream.subscriber import MeshSubscriber

    url = "tcp://127.0.0.1:57411"
    latencies: list[list[float]] = [[] for _ in range(subscribers)]
    counts = [0] * subscribers
    ready = threading.Barrier(subscribers + 1)

    def listen(k: int) -> None:
        with MeshSubscriber(url, timeout_s=5.0, receive_hwm=8) as sub:
            ready.wait()
            for message in sub:
                if isinstance(message, MeshMessage):
                    latencies[k].append((time.time_ns() - message.t_publish_ns) / 1e6)
                    counts[k] += 1

    faces = np.arange(30, dtype=np.int32).reshape(10, 3)
    with MeshPublisher(url, drop_when_full=True, send_hwm=8) as publisher:
        threads = [threading.Thread(target=listen, args=(k,), daemon=True) for k in range(subscribers)]
        for t in threads:
            t.start()
        ready.wait()
        publisher.wait_for_subscribers(subscribers, 10.0)
        publisher.set_topology(faces, n_vertices)
        vertices = np.random.default_rng(0).normal(size=(n_vertices, 3)).astype(np.float32)
        start = time.perf_counter()
        for i in range(messages):
            publisher.publish_mesh(vertices, frame=i)
            time.sleep(max(0.0, start + (i + 1) / 30 - time.perf_counter()))
        publisher.publish_end()
        for t in threads:
            t.join(10)
    allv = np.concatenate([np.asarray(v) for v in latencies if v])
    print(f"\n### Publisher → subscriber latency, {subscribers} subscribers, {messages} meshes of {n_vertices} "
          "vertices at 30 Hz (live mode)\n")
    print("| p50 ms | p95 ms | max ms | received per subscriber (min / max) |")
    print("|---:|---:|---:|---:|")
    stats = latency_stats(allv, None)
    print(f"| {stats['p50']:.2f} | {stats['p95']:.2f} | {allv.max():.2f} | "
          f"{min(counts)} / {max(counts)} |", flush=True)


def bench_overhead(frames: int = 60) -> None:
    """Per-frame cost of moving a 3-camera 1080p frame set through 3 trivial actors."""
    import ray
    from ray.dag import InputNode

    @ray.remote(num_cpus=0)
    class Source:
        def __init__(self):
            self.rgb = np.zeros((1080, 1920, 3), np.uint8)
            self.depth = np.zeros((1080, 1920), np.uint16)

        def read(self, i):
            return [(self.rgb, self.depth) for _ in range(3)]

    @ray.remote(num_cpus=0)
    class Crop:
        def crop(self, cams):
            return [(rgb[:300, :300].copy(), depth[:300, :300].copy()) for rgb, depth in cams]

    @ray.remote(num_cpus=0)
    class Sink:
        def take(self, crops):
            return len(crops)

    source, crop, sink = Source.remote(), Crop.remote(), Sink.remote()
    ray.get(sink.take.remote(crop.crop.remote(source.read.remote(0))))
    rows = []
    for label, inflight in (("sequential", 1), ("3 in flight", 3)):
        start = time.perf_counter()
        pending = []
        for i in range(frames):
            pending.append(sink.take.remote(crop.crop.remote(source.read.remote(i))))
            if len(pending) >= inflight:
                ray.get(pending.pop(0))
        ray.get(pending)
        rows.append((f"plain actor calls, {label}", (time.perf_counter() - start) / frames * 1e3))
    with InputNode() as tick:
        dag = sink.take.bind(crop.crop.bind(source.read.bind(tick)))
    compiled = dag.experimental_compile(_max_inflight_executions=4)
    try:
        for label, inflight in (("sequential", 1), ("3 in flight", 3)):
            ray.get(compiled.execute(0))
            start = time.perf_counter()
            pending = []
            for i in range(frames):
                pending.append(compiled.execute(i))
                if len(pending) >= inflight:
                    ray.get(pending.pop(0))
            for ref in pending:
                ray.get(ref)
            rows.append((f"compiled graph, {label}", (time.perf_counter() - start) / frames * 1e3))
    finally:
        # Ray 2.60's teardown() can wait forever on this machine unless it may kill the actors.
        compiled.teardown(kill_actors=True)
    print("\n### Graph overhead: a 3-camera 1080p frame set through source → crop → sink (no real work)\n")
    print("| execution | ms per frame |")
    print("|---|---:|")
    for label, ms in rows:
        print(f"| {label} | {ms:.1f} |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=120,
                        help="frames of the throughput capture (default 120; synthesized once, then reused)")
    parser.add_argument("--memory-frames", type=int, nargs="*", default=[120, 480],
                        help="run lengths for the memory check (default 120 480; the issue's: 300 1800)")
    parser.add_argument("--live-loops", type=int, default=10, help="laps of the live-paced replay (default 10)")
    parser.add_argument("--only", choices=("throughput", "folder", "memory", "stream", "overhead", "live"),
                        action="append")
    parser.add_argument("--live", action="store_true",
                        help="only the live path: warm start, drops by cause, latency budget (= --only live)")
    parser.add_argument("--live-seconds", type=float, default=20.0, help="length of the live-paced replays (default 20)")
    parser.add_argument("--live-runs", nargs="+", choices=LIVE_RUNS, default=list(LIVE_RUNS),
                        help="which live runs (default all): " + ", ".join(LIVE_RUNS))
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="settings",
                        help="live runs: a config override (YAML value), e.g. --set policy.max_inflight=3 "
                             "(ray.* settings also start this run's local Ray)")
    parser.add_argument("--json", metavar="PATH", help="also write the live path's figures as JSON")
    parser.add_argument("--steal", type=float, default=0.0, metavar="FRACTION",
                        help="live runs: busy-loop processes take this fraction of every core (a slower "
                             "machine's stand-in; default 0)")
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    try:
        settings = parse_overrides(args.settings)
    except InputError as exc:
        parser.error(str(exc))
    # Ray is started once, here: a `--set ray.…` setting of the local Ray (worker niceness, inline
    # object size) takes effect only through this call.
    ensure_ray(load_config(None, {k: v for k, v in settings.items() if k.startswith("ray.")}
                           | {"ray.num_cpus": args.num_cpus}))
    load_at_start = os.getloadavg()
    only = set(args.only or (("live",) if args.live else ("throughput", "folder", "memory", "stream", "overhead",
                                                          "live")))
    print(f"## benchmarks/pipeline.py ({args.num_cpus} Ray CPUs; shared machine, load at start: "
          f"{' '.join(f'{x:.1f}' for x in load_at_start)})")
    if "overhead" in only:
        bench_overhead()
    if "stream" in only:
        bench_stream()
    if "throughput" in only:
        bench_throughput(args.frames, args.live_loops)
    if "folder" in only:
        bench_folder()
    if "memory" in only and args.memory_frames:
        bench_memory(args.memory_frames)
    if "live" in only:
        figures = bench_live(args.live_seconds, runs=tuple(args.live_runs), settings=settings, steal=args.steal)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({"load_at_start": load_at_start, "settings": settings,
                                                   "steal": args.steal, "runs": figures}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
