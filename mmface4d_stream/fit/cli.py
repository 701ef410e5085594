"""`mmface4d calibrate`: rig extrinsics from the first frames of a dataset-format sequence.

Reads `<DIR>/<NAME>_<cam>.mp4` (colour), `<NAME>_<cam>.nut` (depth registered to colour, mm) and
`<NAME>_<cam>.json` (intrinsics, serial number) for every camera, runs FaceMesh per camera on the
first frames until `--frames` frames have the face in every camera, and writes a `RigCalibration`
JSON that later runs reuse for every sequence of the same rig.
"""

from __future__ import annotations

import argparse
import logging
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
    from mmface4d_stream.formats.sequence import sequence_cameras as cameras_of

    prefix = Path(file_path)
    if not prefix.parent.is_dir():
        raise InputError("directory not found", path=prefix.parent)
    cams = cameras_of(prefix, ("json",))
    if not cams:
        raise InputError(f"no camera files {prefix.name}_<cam>.json", path=prefix.parent)
    return cams


def cmd_calibrate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mmface4d_stream.fit.rig import RigCalibratorConfig
    from mmface4d_stream.pipeline.rig_setup import calibrate_rig
    from mmface4d_stream.pipeline.sources import DatasetSource

    if args.frames < 1:
        raise InputError(f"--frames must be at least 1, got {args.frames}")
    if args.max_frames < args.frames:
        raise InputError(f"--max_frames ({args.max_frames}) must be at least --frames ({args.frames})")
    prefix = Path(args.file_path)
    cams = sequence_cameras(prefix)
    if args.reference is not None and args.reference not in range(len(cams)):
        raise InputError(f"--reference {args.reference} is not a camera index 0..{len(cams) - 1}")
    for cam in cams:
        for ext in (".mp4", ".nut"):
            path = prefix.parent / f"{prefix.name}_{cam}{ext}"
            if not path.is_file():
                raise InputError("file not found", path=path)
    # The frames of every camera, depth registered to colour: the rig policy `reconstruct` and the graph use.
    source = DatasetSource(prefix, cameras=cams, truncate=True)
    logger.info("calibrating %d cameras (%s)", len(cams), ", ".join(source.serials))
    with tqdm(total=args.frames, desc="calibrate", unit="good frame", leave=False) as progress:
        calibration = calibrate_rig(source, frames=args.frames, max_frames=args.max_frames, reference=args.reference,
                                    calibrator_config=RigCalibratorConfig(icp=not args.no_icp),
                                    on_good_frame=lambda count: progress.update(1), hint="")
    calibration.source = str(prefix)
    calibration.save(args.out)
    logger.info("reference camera %d", calibration.reference)
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
