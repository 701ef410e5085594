#!/usr/bin/env python
"""Reconstruct archived captures through the Ray graph (`make demo` runs it with no arguments).

Inputs: dataset-format sequences (`DIR/NAME` with NAME_<cam>.mp4/.nut/.json), Azure Kinect MKVs
(the .mkv files named on the command line form one session), or folders holding many of either
(searched recursively: every dataset sequence, and every folder of .mkv files as one session).
One pipeline per sequence; outputs `<out>/<name>_{0,1,2}.nut` + `_faces.npy` + `_meta.json`;
finished outputs are skipped on a re-run. `--address` joins a Ray cluster.

With no inputs: synthesizes the sample capture (3 Kinects filming the embedded sample subject,
with ground truth) into out/demo/, replays it through the graph, writes the meshes and a preview
video, and prints the error against the ground truth.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from graphs.config import load_config  # noqa: E402
from graphs.frame_graph import SequenceJob  # noqa: E402
from mmface4d_stream.errors import InputError  # noqa: E402
from mmface4d_stream.formats.sequence import mkv_session_name, sequence_cameras, sequence_names  # noqa: E402

log = logging.getLogger("run_offline")


def discover_jobs(inputs: list[str], out_dir: Path) -> list[SequenceJob]:
    """Sequences named by `inputs` (see the module docstring), each with its output prefix."""
    mkvs = [Path(p) for p in inputs if p.lower().endswith(".mkv")]
    others = [Path(p) for p in inputs if not p.lower().endswith(".mkv")]
    jobs: list[SequenceJob] = []
    if mkvs:
        missing = [str(p) for p in mkvs if not p.is_file()]
        if missing:
            raise InputError(f"no such recording: {', '.join(missing)}")
        name = mkv_session_name(mkvs[0])
        jobs.append(SequenceJob([str(p) for p in mkvs], str(out_dir / name), name))
    for path in others:
        if path.is_dir():
            found = _scan_folder(path, out_dir)
            if not found:
                raise InputError("no dataset sequence (NAME_0.mp4 ...) or .mkv recording in this folder", path)
            jobs.extend(found)
        elif path.parent.is_dir() and sequence_cameras(path, ("mp4",)):
            jobs.append(SequenceJob([str(path)], str(out_dir / path.name), path.name))
        else:
            raise InputError("not a dataset sequence DIR/NAME (no NAME_<cam>.mp4 beside it), .mkv file or folder",
                             path)
    names = [job.name for job in jobs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"several inputs are named {', '.join(duplicates)}: their outputs would collide")
    return jobs


def check_inputs(jobs: list[SequenceJob]) -> None:
    """Open every recording's header and every camera json before Ray starts: a damaged MKV or
    intrinsics file is one line naming it (InputError), not an actor's death inside the graph."""
    from mmface4d_stream.formats.intrinsics import IntrinsicsJson
    from mmface4d_stream.k4a.mkv_reader import MkvReader

    for job in jobs:
        for source in job.inputs:
            path = Path(source)
            if path.suffix.lower() == ".mkv":
                with MkvReader(path):
                    pass
            else:
                for camera in sequence_cameras(path, ("json",)):
                    IntrinsicsJson.load(path.parent / f"{path.name}_{camera}.json")


def _scan_folder(folder: Path, out_dir: Path) -> list[SequenceJob]:
    jobs = []
    for directory in sorted([folder] + [p for p in folder.rglob("*") if p.is_dir()]):
        mkvs = sorted(directory.glob("*.mkv"))
        if mkvs:
            name = mkv_session_name(mkvs[0])
            jobs.append(SequenceJob([str(p) for p in mkvs], str(out_dir / name), name))
        for name in sequence_names(directory, ("mp4",)):
            jobs.append(SequenceJob([str(directory / name)], str(out_dir / name), name))
    return jobs


def parse_overrides(pairs: list[str]) -> dict:
    """`key=value` pairs, values parsed as YAML (`ray.compiled=true`, `source.cameras=[1]`)."""
    import yaml

    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"--set takes KEY=VALUE, got {pair!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def cli_overrides(args) -> dict:
    """Config overrides from the command line: `--set` pairs, then --address, --num-cpus, --max-frames."""
    overrides = parse_overrides(args.set)
    if args.address:
        overrides["ray.address"] = args.address
    if args.num_cpus:
        overrides["ray.num_cpus"] = args.num_cpus
    if args.max_frames:
        overrides["source.max_frames"] = args.max_frames
    if getattr(args, "curve_certificate", None):  # run_live.py shares this function
        overrides["publish.curve_certificate"] = args.curve_certificate
    return overrides


def start_preview(url: str):
    """The web preview of the mesh stream, if the preview package is there (else one line saying so)."""
    try:
        from mmface4d_stream.preview import start_preview_server
    except ImportError as exc:
        print(f"--preview: the web preview is not available ({exc}); the stream is still published at {url}",
              file=sys.stderr)
        return None
    server = start_preview_server(url)
    print(f"preview: open {server.url} in a browser", file=sys.stderr)
    return server


def install_stop_handler(stop: threading.Event) -> None:
    """First Ctrl-C: stop feeding frames, finalize the outputs; a second one aborts."""
    def handler(signum, frame):
        if stop.is_set():
            # Unwinding through Ray here can crash in ray.shutdown (a segfault was seen); the mesh
            # files already hold every encoded frame (flushed per packet), so leave at once.
            print("\naborted", file=sys.stderr)
            sys.stderr.flush()
            os._exit(130)
        print("\nstopping: finishing the frames in flight and finalizing the outputs (Ctrl-C again to abort)",
              file=sys.stderr)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def print_result(result) -> None:
    meta = result.meta
    status = "ok" if result.ok else ("interrupted" if result.interrupted else "FAILED")
    lost = meta.get("frames_lost_face", [])
    line = (f"{result.job.name}: {status}, {meta.get('frames_written', 0)} frames -> {result.job.save_path}_{{0,1,2}}.nut, "
            f"{meta.get('frames_per_second')} frames/s (first frame after {meta.get('first_frame_seconds')} s, "
            f"then {meta.get('steady_frames_per_second')} frames/s)")
    if lost:
        line += f", face lost in {len(lost)} frames (first {lost[:5]})"
    if meta.get("frames_dropped"):
        line += f", {len(meta['frames_dropped'])} frames dropped"
    if meta.get("restarts"):
        line += f", {meta['restarts']} actor restarts"
    print(line, file=sys.stderr)
    if result.error:
        print(f"{result.job.name}: {result.error}", file=sys.stderr)


def demo(args, config) -> int:
    from graphs.runner import run_jobs
    from mmface4d_stream.fit.evaluate import evaluate_sequence
    from mmface4d_stream.render.synth import synthesize_capture

    out = Path(args.out or "out/demo")
    print(f"demo: synthesizing a {args.demo_frames}-frame capture of the sample subject by 3 Kinects "
          f"into {out / 'capture'} (reused when already there)", file=sys.stderr)
    start = time.perf_counter()
    capture = synthesize_capture(out / "capture", frames=args.demo_frames, cameras=3, seed=0, name="demo",
                                 write_mkv=False, progress=not args.no_progress, reuse=True)
    synth_s = time.perf_counter() - start
    job = SequenceJob([str(capture.sequence_prefix)], str(out / "demo"), "demo")
    stop = threading.Event()
    install_stop_handler(stop)
    start = time.perf_counter()
    results = run_jobs([job], config, publish_url=args.publish_url, progress=not args.no_progress,
                       skip_finished=False, stop=stop)
    result = results[0]
    print_result(result)
    if not result.ok:
        return 1
    graph_s = time.perf_counter() - start
    error = evaluate_sequence(job.save_path, capture.gt_mesh_prefix.parent,
                              reference_device=result.meta["reference_camera"])
    video = None
    if not args.no_video:
        from mmface4d_stream.render.visualize import render_mesh_video

        video = render_mesh_video(job.save_path, out / "preview", faces=f"{job.save_path}_faces.npy", views=3,
                                  size=256, progress=not args.no_progress)
    latency = result.meta.get("stage_latency_ms", {})
    print(json.dumps({"error_vs_ground_truth_mm": error.to_dict(), "stage_latency_ms": latency}, indent=1))
    print(f"\ncapture (dataset files, ground truth): {capture.out_dir}  [{synth_s:.0f} s]")
    print(f"meshes: {job.save_path}_{{0,1,2}}.nut, {job.save_path}_faces.npy, {job.save_path}_meta.json  "
          f"[{graph_s:.0f} s through the graph, {result.meta.get('frames_per_second')} frames/s]")
    if video:
        print(f"preview video: {video}")
    print(f"error against ground truth: mean {error.recon_to_gt.mean_mm:.2f} mm, "
          f"p95 {error.recon_to_gt.p95_mm:.2f} mm over {error.frames} frames")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", help="dataset sequences DIR/NAME, .mkv files of one session, or folders")
    parser.add_argument("--out", help="output folder (default out/offline; the demo: out/demo)")
    parser.add_argument("--config", default=None,
                        help="YAML config: a path or a name in configs/ (defaults, 1-cam, 3-cam, offline-cluster)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set ray.compiled=true (repeatable)")
    parser.add_argument("--address", help="join this Ray cluster (e.g. HOST:6379 or auto) instead of a local Ray")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--max-frames", type=int, help="stop each sequence after this many frames")
    parser.add_argument("--publish", nargs="?", const="tcp://127.0.0.1:5555", default=None, metavar="URL",
                        help="publish meshes over ZeroMQ (default URL tcp://127.0.0.1:5555)")
    parser.add_argument("--curve-certificate", metavar="FILE",
                        help="ZeroMQ certificate with the publisher's CURVE secret key (required to publish beyond "
                             "loopback; subscribers use its public key: mmface4d subscribe --server-key FILE.key)")
    parser.add_argument("--preview", action="store_true", help="web preview of the published stream (implies --publish)")
    parser.add_argument("--redo", action="store_true", help="reconstruct again even when the outputs are finished")
    parser.add_argument("--demo-frames", type=int, default=45, help="frames of the demo capture (default 45)")
    parser.add_argument("--no-video", action="store_true", help="demo: skip the preview video")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        config = load_config(args.config, cli_overrides(args))
        if args.preview and not args.publish:
            args.publish = config.publish.url
        args.publish_url = args.publish
        if args.publish:
            from mmface4d_stream.stream.curve import server_keys

            # Refused now, with the option that fixes it, rather than by the publisher actor later.
            server_keys(args.publish, config.publish.curve_certificate, "--curve-certificate FILE")
        preview = start_preview(args.publish) if args.preview else None
        try:
            if not args.inputs:
                return demo(args, config)
            return offline(args, config)
        finally:
            if preview is not None:
                preview.close()
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def offline(args, config) -> int:
    from graphs.runner import run_jobs
    from mmface4d_stream.formats.output_files import check_output_dir

    jobs = discover_jobs(args.inputs, Path(args.out or "out/offline"))
    check_inputs(jobs)
    check_output_dir(Path(args.out or "out/offline"))
    stop = threading.Event()
    install_stop_handler(stop)
    results = run_jobs(jobs, config, publish_url=args.publish_url, progress=not args.no_progress,
                       skip_finished=not args.redo, stop=stop, on_result=print_result)
    skipped = [job.name for job, result in zip(jobs, results) if result is None]
    if skipped:
        print(f"skipped {len(skipped)} finished sequence(s): {', '.join(skipped[:10])}"
              f"{' ...' if len(skipped) > 10 else ''} (--redo to reconstruct them again)", file=sys.stderr)
    failed = [r for r in results if r is not None and not r.ok]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
