#!/usr/bin/env python
"""Live capture: 1–3 Azure Kinects (+ microphone) through the Ray graph, meshes published as they come.

Kinects are read through pyk4a (optional extra `live`: pip install 'mmface4d-stream[live]', plus
Microsoft's Azure Kinect Sensor SDK): the first serial is the wired-sync master, the others
subordinates. Every captured frame is written as a dataset sequence (NAME_<cam>.mp4/.nut/.json,
NAME.wav from sounddevice) under --out, while the graph reconstructs the newest frames and
publishes them over ZeroMQ (live policy: frames the graph cannot keep up with are dropped and
counted; the mesh file repeats the previous mesh for them). Ctrl-C stops and finalizes everything.

`--replay A.mkv [B.mkv ...]` feeds recordings at device rate through exactly the same graph, so the
live path can be exercised without devices.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from graphs.config import load_config  # noqa: E402
from graphs.frame_graph import SequenceJob  # noqa: E402
from mmface4d_stream.errors import InputError  # noqa: E402
from mmface4d_stream.formats.sequence import mkv_session_name  # noqa: E402
from run_offline import cli_overrides, install_stop_handler, print_result, start_preview  # noqa: E402

log = logging.getLogger("run_live")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serials", nargs="+", help="Kinect serial numbers, master first (default: all connected)")
    parser.add_argument("--replay", nargs="+", metavar="MKV", help="replay these recordings at device rate instead")
    parser.add_argument("--name", default=None, help="sequence name (default: live, or the recordings' name)")
    parser.add_argument("--out", default="out/live", help="output folder (default out/live)")
    parser.add_argument("--record", dest="record", action="store_true", default=None,
                        help="write the dataset files (default: on for Kinects, off for --replay)")
    parser.add_argument("--no-record", dest="record", action="store_false")
    parser.add_argument("--no-audio", action="store_true", help="no microphone recording")
    parser.add_argument("--audio-device", default=None, help="sounddevice input device (name or index)")
    parser.add_argument("--color-resolution", default="1080P", help="Kinect color mode (default 1080P)")
    parser.add_argument("--depth-mode", default="NFOV_UNBINNED", help="Kinect depth mode (default NFOV_UNBINNED)")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument("--max-frames", type=int, help="stop after this many frames")
    parser.add_argument("--config", default="live", help="YAML config (default configs/live.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one config key")
    parser.add_argument("--publish", default=None, metavar="URL", help="mesh stream endpoint (default from the config)")
    parser.add_argument("--no-publish", action="store_true", help="do not publish meshes")
    parser.add_argument("--preview", action="store_true", help="web preview of the stream")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--address", help="join this Ray cluster")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return live(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def say_ready(startup: dict) -> None:
    """The console's "ready" line: every actor is warm and the capture clock starts now."""
    from graphs.sequence_graph import ready_line

    print(f"{ready_line(startup)}: the capture clock starts now", file=sys.stderr, flush=True)


def live(args) -> int:
    from graphs.runner import run_jobs

    overrides = cli_overrides(args)
    overrides.setdefault("policy.mode", "live")
    config = load_config(args.config, overrides)
    if config.policy.mode != "live":
        raise InputError("run_live.py runs the live policy; use run_offline.py for policy.mode offline")
    out = Path(args.out)
    if args.replay:
        missing = [p for p in args.replay if not Path(p).is_file()]
        if missing:
            raise InputError(f"no such recording: {', '.join(missing)}")
        name = args.name or mkv_session_name(args.replay[0])
        inputs, kinect = [str(p) for p in args.replay], None
        record = bool(args.record)
    else:
        from mmface4d_stream.pipeline.kinect import import_pyk4a

        import_pyk4a()  # a missing extra is one clear line before Ray starts
        name = args.name or "live"
        inputs = ["kinect"]
        kinect = {"serials": args.serials, "color_resolution": args.color_resolution, "depth_mode": args.depth_mode}
        record = args.record is not False
    record_dir = str(out / "capture") if record else None
    job = SequenceJob(inputs, str(out / name), name, kinect=kinect, record_dir=record_dir)

    publish_url = None if args.no_publish else (args.publish or config.publish.url)
    from mmface4d_stream.formats.output_files import check_output_dir
    from mmface4d_stream.stream.curve import server_keys

    # Refused now, before Ray and the cameras start: an unwritable output folder, a stream beyond
    # loopback without a CURVE certificate.
    check_output_dir(out)
    if publish_url:
        server_keys(publish_url, config.publish.curve_certificate, "--set publish.curve_certificate=FILE")
    audio = None
    if record and not args.replay and not args.no_audio:
        from mmface4d_stream.audio.recorder import AudioRecorder

        audio = AudioRecorder(Path(record_dir) / f"{name}.wav", device=args.audio_device)
    stop = threading.Event()
    install_stop_handler(stop)
    timer = None
    if args.duration:
        timer = threading.Timer(args.duration, stop.set)
        timer.daemon = True
        timer.start()
    preview = start_preview(publish_url) if args.preview and publish_url else None
    if publish_url:
        print(f"publishing meshes on {publish_url} (mmface4d subscribe {publish_url})", file=sys.stderr)
    print("capturing: Ctrl-C stops and finalizes the files", file=sys.stderr)
    results = None
    try:
        results = run_jobs([job], config, publish_url=publish_url, progress=not args.no_progress,
                           skip_finished=False, stop=stop, on_ready=say_ready)
    finally:
        if timer is not None:
            timer.cancel()
        if audio is not None:
            # Sample 0 of the wav becomes the first recorded frame's capture time.
            first_ns = results[0].meta.get("first_recorded_host_ns") if results else None
            alignment = audio.close(first_frame_host_ns=first_ns)
            if alignment is not None:
                from mmface4d_stream.pipeline.sinks import update_meta

                update_meta(job.save_path, alignment.to_meta())
            print(f"audio: {audio.path}" + ("" if alignment is None else
                  f" (offset {alignment.offset_s:.4f} s ± {alignment.uncertainty_s:.4f} s)"), file=sys.stderr)
        if preview is not None:
            preview.close()
    result = results[0]
    print_result(result)
    meta = result.meta
    print(json.dumps({
        "frames_out": meta.get("frames_out"),
        "frames_fitted": meta.get("frames"),
        "frames_dropped": len(meta.get("frames_dropped", [])),
        "frames_hurried": meta.get("frames_hurried"),
        "source_frames_dropped": meta.get("source_frames_dropped"),
        "end_to_end_latency_ms": meta.get("stage_latency_ms", {}).get("end_to_end"),
        "recorded": meta.get("recorded"),
    }, indent=1))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
