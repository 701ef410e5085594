"""`mmface4d reconstruct`: the upstream command's names, on the streaming stages."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmface4d_stream.errors import InputError
from mmface4d_stream.fit.fitter_config import RASTER_MODES
from mmface4d_stream.formats.output_files import check_output_dir


def _camera_selection(count: int | None, available: int) -> list[int] | None:
    """`--cameras 1` is the centre camera (the middle index, as in the dataset), `--cameras K` the first K."""
    if count is None or count >= available:
        return None
    if count == 1:
        return [available // 2]
    if count < 1:
        raise InputError(f"--cameras must be at least 1, got {count}")
    return list(range(count))


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from mmface4d_stream.pipeline.run import ReconstructOptions, reconstruct
    from mmface4d_stream.pipeline.stage_config import FitStageConfig, SmoothStageConfig, SourceConfig

    if bool(args.file_path) == bool(args.mkv):
        raise InputError("give either --file_path DIR/NAME or --mkv A.mkv [B.mkv ...]")
    inputs = args.mkv or [args.file_path]
    # Before minutes of decoding and rig calibration: an unwritable output place fails now.
    check_output_dir(Path(args.save_path).parent, create=True)
    cameras = None
    if args.file_path and args.cameras is not None:
        from mmface4d_stream.formats.sequence import DatasetSequence

        cameras = _camera_selection(args.cameras, len(DatasetSequence(args.file_path).camera_indices))
    elif args.mkv and args.cameras is not None and args.cameras != len(args.mkv):
        raise InputError("with --mkv, give exactly the recordings to use instead of --cameras")
    options = ReconstructOptions(
        source=SourceConfig(cameras=cameras, max_frames=args.max_frames),
        fitter=FitStageConfig(face_model=args.face_model, bfm_folder=args.bfm_folder,
                              landmark_mapping=args.landmark_mapping, device=args.device, rig=args.rig,
                              reference=args.reference, raster=args.raster),
        smoother=SmoothStageConfig(enabled=args.smooth), progress=not args.no_progress)
    meta = reconstruct(inputs, args.save_path, options)
    print(json.dumps({k: meta[k] for k in ("frames", "frames_lost_face", "model", "frames_per_second")}),
          file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reconstruct", help="reconstruct a face mesh sequence from a dataset sequence or Kinect MKVs",
        description="Fit a face model to every frame of a dataset-format sequence (NAME_i.mp4/.nut/.json) or a "
                    "set of Azure Kinect MKVs, and write SAVE_PATH_{0,1,2}.nut (the MMFace4D mesh format), "
                    "SAVE_PATH_faces.npy and SAVE_PATH_meta.json (model, cameras, frames with a lost face, "
                    "fit residuals). Multi-camera rigs are calibrated from the first frames unless --rig is given.")
    p.add_argument("--file_path", help="dataset sequence DIR/NAME")
    p.add_argument("--mkv", nargs="+", help="Azure Kinect recordings of one session (instead of --file_path)")
    p.add_argument("--save_path", required=True, help="output prefix")
    p.add_argument("--cameras", type=int, default=None,
                   help="3: all cameras (default); 1: the centre camera only")
    p.add_argument("--face-model", choices=("template", "bfm"), default="template",
                   help="template: built-in, no licensed file (default); bfm: your BFM_model_front.mat")
    p.add_argument("--bfm-folder", help="folder with BFM_model_front.mat (and landmark_mapping2.json)")
    p.add_argument("--landmark-mapping", help="landmark_mapping2.json (default: beside the BFM)")
    p.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda")
    p.add_argument("--rig", help="rig calibration JSON from `mmface4d calibrate` (else calibrated now)")
    p.add_argument("--reference", type=int, default=None, help="reference camera index (default: the middle one)")
    p.add_argument("--smooth", action="store_true", help="causal 5 Hz Butterworth on the vertices while fitting")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--raster", choices=RASTER_MODES, default="off",
                   help="the fitter's rasterized terms (fitter.raster): off (default), depth, or depth+color "
                        "(with the photometric term)")
    p.set_defaults(func=cmd_reconstruct)
