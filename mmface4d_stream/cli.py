"""The `mmface4d` command.

Each area of the library contributes its subcommands through a `register(subparsers)` function in
its own `cli` module, listed in `COMMAND_MODULES`; this file only assembles them and turns
`InputError` into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys

from mmface4d_stream import __version__
from mmface4d_stream.errors import InputError

COMMAND_MODULES: tuple[str, ...] = (
    "mmface4d_stream.formats.cli",
    "mmface4d_stream.pipeline.cli",
    "mmface4d_stream.stream.cli",
    "mmface4d_stream.smoothing_cli",
    "mmface4d_stream.k4a.cli",
    "mmface4d_stream.fit.rig_cli",
    "mmface4d_stream.render.cli",
    "mmface4d_stream.preview.cli",
    "mmface4d_stream.animate.cli",
)


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
