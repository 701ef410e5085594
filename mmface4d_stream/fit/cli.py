"""`mmface4d calibrate`: rig extrinsics from the first frames of a dataset-format sequence.

Reads `<DIR>/<NAME>_<cam>.mp4` (colour), `<NAME>_<cam>.nut` (depth registered to colour, mm) and
`<NAME>_<cam>.json` (intrinsics, serial number) for every camera, runs FaceMesh per camera on the
first frames until `--frames` frames have the face in every camera, and writes a `RigCalibration`
JSON that later runs reuse for every sequence of the same rig.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
from pathlib import Path

from mmface4d_stream.errors import InputError

logger = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="rig extrinsics (every camera in the centre camera) from a sequence's first frames",
        description=(
            "Estimate each camera's pose in the reference (centre) camera from the face seen by all "
            "cameras: FaceMesh landmarks lifted with depth, robust Kabsch, point-to-plane ICP. "
            "Writes a JSON file reusable for all sequences of the rig."
        ),
    )
    p.add_argument("--file_path", required=True, help="sequence prefix DIR/NAME (files NAME_<cam>.mp4/.nut/.json)")
    p.add_argument("--out", required=True, help="output rig calibration JSON")
    p.add_argument("--frames", type=int, default=5, help="good frames to use (default 5)")
    p.add_argument(
        "--max_frames", type=int, default=300,
        help="give up when this many frames were read without enough good ones (default 300)",
    )
    p.add_argument("--reference", type=int, default=None, help="reference camera index (default: the middle one)")
    p.add_argument("--no_icp", action="store_true", help="landmark alignment only, no point-to-plane ICP")
    p.set_defaults(func=cmd_calibrate)


def sequence_cameras(file_path: str | Path) -> list[int]:
    """Camera indices of a dataset-format sequence: every `<NAME>_<cam>.json` beside the prefix."""
    prefix = Path(file_path)
    if not prefix.parent.is_dir():
        raise InputError("directory not found", path=prefix.parent)
    pattern = re.compile(re.escape(prefix.name) + r"_(\d+)\.json$")
    cams = sorted(int(m.group(1)) for f in prefix.parent.iterdir() if (m := pattern.match(f.name)))
    if not cams:
        raise InputError(f"no camera files {prefix.name}_<cam>.json", path=prefix.parent)
    return cams


def _managed(stack: contextlib.ExitStack, reader):
    """Register a reader for closing with `stack` (context manager or `close()`); returns it."""
    if hasattr(reader, "__exit__"):
        stack.enter_context(reader)
    elif hasattr(reader, "close"):
        stack.callback(reader.close)
    return reader


def cmd_calibrate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mmface4d_stream.face.landmarks import FaceLandmarker
    from mmface4d_stream.fit.rig import RigCalibrator, RigCalibratorConfig
    from mmface4d_stream.formats.color_mp4 import ColorMp4Reader
    from mmface4d_stream.formats.depth_nut import DepthNutReader
    from mmface4d_stream.formats.intrinsics import IntrinsicsJson

    if args.frames < 1:
        raise InputError(f"--frames must be at least 1, got {args.frames}")
    if args.max_frames < args.frames:
        raise InputError(f"--max_frames ({args.max_frames}) must be at least --frames ({args.frames})")
    prefix = Path(args.file_path)
    cams = sequence_cameras(prefix)
    if args.reference is not None and args.reference not in range(len(cams)):
        raise InputError(f"--reference {args.reference} is not a camera index 0..{len(cams) - 1}")
    intrinsics, paths = [], []
    for cam in cams:
        base = prefix.parent / f"{prefix.name}_{cam}"
        for ext in (".mp4", ".nut"):
            if not base.with_name(base.name + ext).is_file():
                raise InputError("file not found", path=base.with_name(base.name + ext))
        intrinsics.append(IntrinsicsJson.load(base.with_name(base.name + ".json")))
        paths.append(base)
    serials = [str(k.serial_number) for k in intrinsics]
    calibrator = RigCalibrator(
        intrinsics, serials, reference=args.reference, config=RigCalibratorConfig(icp=not args.no_icp)
    )
    logger.info("calibrating %d cameras (%s), reference camera %d", len(cams), ", ".join(serials), calibrator.reference)

    with contextlib.ExitStack() as stack:
        colors = [_managed(stack, ColorMp4Reader(p.with_name(p.name + ".mp4"))) for p in paths]
        depths = [_managed(stack, DepthNutReader(p.with_name(p.name + ".nut"))) for p in paths]
        landmarkers = [stack.enter_context(FaceLandmarker()) for _ in cams]
        streams = [zip(iter(c), iter(d)) for c, d in zip(colors, depths)]
        progress = stack.enter_context(tqdm(total=args.frames, desc="calibrate", unit="good frame", leave=False))
        for frame in range(args.max_frames):
            views = [next(s, None) for s in streams]
            if any(v is None for v in views):
                break
            results = []
            for cam, ((rgb, depth), landmarker) in enumerate(zip(views, landmarkers)):
                if rgb.shape[:2] != depth.shape:
                    raise InputError(
                        f"colour {rgb.shape[1]}x{rgb.shape[0]} and depth {depth.shape[1]}x{depth.shape[0]} "
                        "sizes differ (depth must be registered to colour)",
                        path=paths[cam].with_name(paths[cam].name + ".nut"), frame=frame,
                    )
                results.append(landmarker.process(rgb, depth))
            found = [r.points_px if r.found else None for r in results]
            if calibrator.add_frame(found, [v[1] for v in views], frame_index=frame):
                progress.update(1)
                if calibrator.n_frames >= args.frames:
                    break
            else:
                logger.debug("frame %d: face found in cameras %s", frame, [r.found for r in results])
    if calibrator.n_frames == 0:
        raise InputError(
            "the face was never found with depth in every camera at once "
            f"(searched the first {args.max_frames} frames)",
            path=prefix,
        )
    if calibrator.n_frames < args.frames:
        logger.warning("only %d good frames (asked for %d)", calibrator.n_frames, args.frames)
    calibration = calibrator.solve()
    calibration.source = str(prefix)
    calibration.save(args.out)
    for i, cam in enumerate(calibration.cameras):
        if i == calibration.reference:
            continue
        icp = "" if cam.icp_rmse_mm is None else f", ICP RMS {cam.icp_rmse_mm:.2f} mm"
        logger.info(
            "camera %d (%s): landmark RMS %.2f mm (%d/%d inliers)%s",
            i, cam.serial, cam.landmark_rmse_mm, cam.landmark_inliers, cam.landmark_pairs, icp,
        )
    logger.info("wrote %s from frames %s", args.out, calibration.frames)
    return 0
