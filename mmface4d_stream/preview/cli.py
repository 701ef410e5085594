"""`mmface4d preview`: watch a mesh stream live in a web browser.

Subscribes to the publisher at URL and serves the preview page on http://HOST:PORT/ (loopback by
default). To watch from a laptop on the capture network, give `--host 0.0.0.0` (or the capture
PC's address): the page then needs the access token that the printed address carries. Runs until
Ctrl-C. The page's three.js is built once with tools/build_preview_assets.sh.
"""

from __future__ import annotations

import argparse
import errno
import logging
import time

from mmface4d_stream.errors import InputError
from mmface4d_stream.preview.server import DEFAULT_HOST, DEFAULT_PORT, start_preview_server
from mmface4d_stream.stream.cli import _read_key
from mmface4d_stream.stream.publisher import DEFAULT_URL

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "preview",
        help="live preview of a mesh stream in a web browser (three.js)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("url", nargs="?", default=DEFAULT_URL, help=f"publisher endpoint (default {DEFAULT_URL})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"HTTP port (default {DEFAULT_PORT}; 0: any free port)")
    parser.add_argument(
        "--host", default=DEFAULT_HOST,
        help=f"address to serve on (default {DEFAULT_HOST}, this machine only; 0.0.0.0: every interface, with a token)",
    )
    parser.add_argument("--token", default=None, help="access token to require (default: random off loopback, none on it)")
    parser.add_argument(
        "--server-key", default=None, metavar="KEY",
        help="the publisher's CURVE public key (Z85 text, or a file holding it) for an encrypted stream",
    )
    parser.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds (default: until Ctrl-C)")
    parser.set_defaults(func=cmd_preview)


def cmd_preview(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be in [0, 65535], got {args.port}")
    options = {}
    key = _read_key(args.server_key)
    if key is not None:
        options["subscriber_options"] = {"curve_server_key": key}
    try:
        server = start_preview_server(args.url, args.host, args.port, token=args.token, **options)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise InputError(f"port {args.port} on {args.host} is in use: choose another with --port") from None
        raise InputError(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise InputError(str(exc)) from None
    try:
        log.info("open %s in a browser (Ctrl-C stops)", server.url)
        deadline = None if args.duration is None else time.monotonic() + args.duration
        while deadline is None or time.monotonic() < deadline:
            if server.wait(0.5):
                break
    except KeyboardInterrupt:
        log.info("stopping the preview")
    finally:
        server.close()
    return 0
