"""Azure Kinect MKV throughput: write, replay (all tracks / depth only), header scan, sync, preprocess.

Writes a synthetic 1080p MJPG + NFOV depth + IR recording (textured color, noisy depth) into a
temporary directory and times each stage. Peak RSS growth while replaying shows that memory does
not depend on the recording's length. Needs ../shared/samples (for a real calibration).

    python benchmarks/k4a_mkv.py [--frames 90]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from skimage import data as skdata

from mmface4d_stream.k4a.mkv_reader import MkvReader
from mmface4d_stream.k4a.mkv_writer import MkvWriter
from mmface4d_stream.k4a.sync import SessionSync

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "samples" / "k4a_recording" / "recording.mkv"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=90)
    args = parser.parse_args()
    with MkvReader(SAMPLE) as reader:
        calibration = reader.calibration_raw
    face = skdata.astronaut()
    color = np.ascontiguousarray(np.tile(face, (3, 4, 1))[:1080, :1920])
    rng = np.random.default_rng(0)
    depth = (1000 + rng.normal(0, 20, (576, 640))).astype(np.uint16)
    ir = rng.integers(0, 4000, (576, 640), dtype=np.uint16)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / f"cam{i}.mkv" for i in range(2)]
        t = time.perf_counter()
        for i, path in enumerate(paths):
            mode = "MASTER" if i == 0 else "SUBORDINATE"
            with MkvWriter(path, calibration_raw=calibration, color_mode="MJPG_1080P", serial_number=f"SN{i}",
                           wired_sync_mode=mode, subordinate_delay_usec=160 * i) as w:
                for k in range(args.frames):
                    w.write(1_000_000 + k * 33_333 + 160 * i, color=np.roll(color, k, axis=1), depth=depth, ir=ir)
        dt = time.perf_counter() - t
        n = 2 * args.frames
        rows.append(("write (MJPG encode + depth + IR)", n, dt))
        size_mb = paths[0].stat().st_size / 1e6

        rss0 = _peak_rss_mb()
        t = time.perf_counter()
        with MkvReader(paths[0]) as reader:
            count = sum(1 for _ in reader)
        rows.append(("replay all tracks (MJPG decode)", count, time.perf_counter() - t))
        rss_growth = _peak_rss_mb() - rss0

        t = time.perf_counter()
        with MkvReader(paths[0], tracks=["DEPTH"]) as reader:
            count = sum(1 for _ in reader)
        rows.append(("replay depth only", count, time.perf_counter() - t))

        t = time.perf_counter()
        with MkvReader(paths[0]) as reader:
            count = reader.count_captures()
        rows.append(("timestamp scan (block headers)", count, time.perf_counter() - t))

        t = time.perf_counter()
        with SessionSync(paths, tracks=["DEPTH"]) as sync:
            count = sum(1 for _ in sync)
        rows.append(("sync 2 recordings, depth only (frame sets)", count, time.perf_counter() - t))

        # preprocess: sync + MJPG decode + depth->color registration + libx264 + FFV1, 2 cameras.
        from mmface4d_stream.formats.audio import write_wav
        from mmface4d_stream.k4a.preprocess import preprocess

        wav = Path(tmp) / "s.wav"
        write_wav(wav, np.zeros(args.frames * 16_000 // 30, np.float32), 16_000)
        t = time.perf_counter()
        result = preprocess(paths, wav, Path(tmp) / "out", "bench", vad=False, progress=False)
        rows.append(("preprocess --no-vad, 2 cameras 1080p (frames)", result.frames, time.perf_counter() - t))

    print(f"Synthetic 1080p MJPG + NFOV recording, {args.frames} captures/camera, {size_mb:.1f} MB per file.")
    print("| stage | items | seconds | items/s |")
    print("|---|---:|---:|---:|")
    for name, items, seconds in rows:
        print(f"| {name} | {items} | {seconds:.2f} | {items / seconds:.1f} |")
    print(f"\nPeak RSS growth during full replay: {rss_growth:.0f} MB")


if __name__ == "__main__":
    main()
