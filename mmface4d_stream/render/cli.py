"""`mmface4d synth` and `mmface4d visualize`: synthetic captures and mesh-sequence videos."""

from __future__ import annotations

import argparse
import sys

from mmface4d_stream.errors import InputError


def cmd_synth(args: argparse.Namespace) -> int:
    from mmface4d_stream.render.kinect_sensor import DepthNoise
    from mmface4d_stream.render.synth import synthesize_capture

    if args.frames < 1:
        raise InputError(f"--frames must be at least 1, got {args.frames}")
    if not 1 <= args.cameras <= 7:
        raise InputError(f"--cameras must be 1..7, got {args.cameras}")
    if not args.name or any(ch in args.name for ch in "/\\") or args.name.startswith("."):
        raise InputError(f"--name must be a plain file name prefix, got {args.name!r}")
    capture = synthesize_capture(
        args.out, frames=args.frames, cameras=args.cameras, seed=args.seed, name=args.name,
        noise=DepthNoise(enabled=not args.exact_depth), distortion=not args.pinhole,
        write_mkv=not args.no_mkv, progress=True, reuse=args.reuse,
    )
    print(f"wrote {capture.n_frames} frames x {capture.n_cameras} cameras to {capture.out_dir} "
          f"(sequence {capture.sequence_prefix}, ground truth in {capture.gt_faces_path.parent})", file=sys.stderr)
    return 0


def cmd_visualize(args: argparse.Namespace) -> int:
    from mmface4d_stream.render.visualize import render_mesh_video

    video = render_mesh_video(args.file_path, args.out_path, n_vertices=args.vertices, faces=args.faces,
                              views=args.views, size=args.size, max_frames=args.max_frames, progress=True)
    print(f"wrote {video}", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "synth", help="render a synthetic multi-Kinect capture with ground truth",
        description="Render the built-in sample subject (from scikit-image's astronaut portrait) talking in "
                    "front of K Azure-Kinect-like cameras: Kinect MKVs in OUT/kinect, MMFace4D files "
                    "(NAME_i.mp4/.nut/.json, NAME.wav) in OUT, ground truth in OUT/gt.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--frames", type=int, default=60, help="number of 30 fps frames (default 60)")
    p.add_argument("--cameras", type=int, default=3, help="number of devices, 1..7 (default 3: front, ±35°)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same content (default 0)")
    p.add_argument("--name", default="synth", help="sequence name, the file prefix (default synth)")
    p.add_argument("--exact-depth", action="store_true", help="no Kinect-like depth noise (mm quantization only)")
    p.add_argument("--pinhole", action="store_true", help="cameras without lens distortion")
    p.add_argument("--no-mkv", action="store_true", help="skip the Kinect MKVs (dataset files and ground truth only)")
    p.add_argument("--reuse", action="store_true",
                   help="keep a complete capture already in --out made with the same arguments")
    p.set_defaults(func=cmd_synth)

    v = subparsers.add_parser(
        "visualize", help="render a mesh nut sequence to OUT/output.mp4",
        description="Render PREFIX_{0,1,2}.nut headless, shaded, one view or three side by side, to "
                    "OUT_PATH/output.mp4 with one video frame per mesh frame.")
    v.add_argument("--file_path", "--file-path", dest="file_path", required=True,
                   help="mesh nut prefix (e.g. out/reconstruct_filt for reconstruct_filt_{0,1,2}.nut)")
    v.add_argument("--out_path", "--out-path", dest="out_path", required=True, help="output folder")
    v.add_argument("--vertices", type=int, default=None, help="vertex count (default: inferred from the file)")
    v.add_argument("--faces", default=None,
                   help="triangles (.npy/.pkl/.obj); required for BFM (35709-vertex) sequences")
    v.add_argument("--views", type=int, choices=(1, 3), default=1, help="1 view or 3 side by side (default 1)")
    v.add_argument("--size", type=int, default=512, help="pixels per (square) view (default 512)")
    v.add_argument("--max-frames", type=int, default=None, help="render only the first frames")
    v.set_defaults(func=cmd_visualize)
