"""`mmface4d smooth`: zero-phase temporal smoothing of a mesh nut triplet (upstream `smooth_4d.py`)."""

from __future__ import annotations

import argparse

from tqdm import tqdm

from mmface4d_stream import smooth


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "smooth",
        help="low-pass a mesh sequence (Butterworth, zero phase) as the released dataset's *_filt files",
        description=(
            "Reads FILE_PATH_{0,1,2}.nut, filters every vertex coordinate over time with a zero-phase "
            "Butterworth low-pass (order 5, 5 Hz at 30 fps, 3 replicated edge frames, like upstream's "
            "smooth_4d.py) and writes OUT_PATH_{0,1,2}.nut. Memory stays bounded: the decoded sequence "
            "is staged in a temporary file beside the output (frames x vertices x 12 bytes)."
        ),
    )
    parser.add_argument("--file_path", "--file-path", dest="file_path", required=True,
                        help="input mesh prefix (or one of its _0/_1/_2.nut files)")
    parser.add_argument("--out_path", "--out-path", dest="out_path", required=True, help="output mesh prefix")
    parser.add_argument("--vertices", type=int, default=None, metavar="N",
                        help="vertex count of the input (default: inferred from the first frame; BFM: 35709)")
    parser.add_argument("--cutoff-hz", type=float, default=smooth.DEFAULT_CUTOFF_HZ, help="cutoff frequency (Hz)")
    parser.add_argument("--order", type=int, default=smooth.DEFAULT_ORDER, help="Butterworth order")
    parser.add_argument("--fps", type=float, default=smooth.DEFAULT_FPS, help="frame rate the filter assumes")
    parser.add_argument("--allow-truncated", action="store_true",
                        help="smooth the complete frames of an input whose writer was killed")
    parser.add_argument("--tmp-dir", default=None, help="where to stage the decoded sequence (default: beside the output)")
    parser.set_defaults(func=run_smooth)


def run_smooth(args: argparse.Namespace) -> int:
    from mmface4d_stream.errors import InputError

    try:
        smooth.check_butterworth_design(args.cutoff_hz, args.order, args.fps)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    with tqdm(desc="smooth", unit="step", leave=False) as bar:

        def progress(n: int, total: int) -> None:
            if bar.total != total:
                bar.total = total
                bar.refresh()
            bar.update(n)

        result = smooth.smooth_mesh_nut(
            args.file_path, args.out_path, n_vertices=args.vertices, cutoff_hz=args.cutoff_hz,
            order=args.order, fps=args.fps, tmp_dir=args.tmp_dir, progress=progress,
            allow_truncated=args.allow_truncated,
        )
    print(f"smoothed {result.n_frames} frames x {result.n_vertices} vertices -> {args.out_path}_{{0,1,2}}.nut")
    return 0
