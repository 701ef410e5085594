"""The `mmface4d` command, and its `smooth` subcommand.

A command lives in the `cli` module of the package that holds its library code: each package
contributes its subcommands through a `register(subparsers)` function there (handlers are named
`cmd_<command>`), listed in `COMMAND_MODULES`. This module assembles them, turns `InputError` into
one line on stderr and exit status 2, and registers the top-level package's own command, `smooth`
(zero-phase temporal smoothing of a mesh nut triplet, upstream `smooth_4d.py`; library code in
`smooth.py`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys

from tqdm import tqdm

from mmface4d_stream import __version__, smooth
from mmface4d_stream.errors import InputError

COMMAND_MODULES: tuple[str, ...] = (
    "mmface4d_stream.formats.cli",
    "mmface4d_stream.pipeline.cli",
    "mmface4d_stream.stream.cli",
    "mmface4d_stream.cli",
    "mmface4d_stream.k4a.cli",
    "mmface4d_stream.fit.cli",
    "mmface4d_stream.render.cli",
    "mmface4d_stream.preview.cli",
    "mmface4d_stream.animate.cli",
)


def register(subparsers) -> None:
    """The top-level package's command: `smooth` (`smooth.smooth_mesh_nut`)."""
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
    parser.set_defaults(func=cmd_smooth)


def cmd_smooth(args: argparse.Namespace) -> int:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmface4d",
        description="Capture, convert and reconstruct MMFace4D-format 4D face data.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            logging.getLogger(__name__).debug("command module %s is not installed", name)
            continue
        module.register(sub)
    return parser


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # SIGTERM finalizes outputs the same way Ctrl-C does (writers close in their `finally`).
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"mmface4d {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mmface4d {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our stdout went away (e.g. `| head`): not an error of ours.
        sys.stderr.close()
        return 141


if __name__ == "__main__":
    sys.exit(main())
