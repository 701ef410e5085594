"""`mmface4d preprocess`: Kinect MKVs + session wav -> MMFace4D dataset files."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "preprocess",
        help="convert a session's Azure Kinect MKVs and wav into MMFace4D files (mp4, depth nut, json, wav)",
        description=(
            "Synchronize the MKVs of one session by device timestamp, clip to the spoken part "
            "(silero-vad) and write NAME_i.mp4, NAME_i.nut (depth registered to color), "
            "NAME_i.json per camera and NAME.wav (16 kHz mono)."
        ),
    )
    parser.add_argument("--mkv", nargs="+", required=True, metavar="MKV",
                        help="the session's recordings; camera i of the outputs is the i-th file")
    parser.add_argument("--audio", required=True, metavar="WAV", help="the session's microphone recording")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--name", required=True, help="sequence name (output file prefix)")
    parser.add_argument("--no-vad", action="store_true",
                        help="keep every frame and all audio instead of clipping to the speech")
    parser.add_argument("--crf", type=int, default=10, help="libx264 quality of the color videos (default 10)")
    parser.set_defaults(func=cmd_preprocess)


def cmd_preprocess(args: argparse.Namespace) -> int:
    from mmface4d_stream.k4a.preprocess import preprocess

    result = preprocess(args.mkv, args.audio, args.out, args.name, vad=not args.no_vad, crf=args.crf)
    log.info("wrote %d frames (%s) and %.2f s of audio: %s", result.frames, result.span,
             result.audio_samples / 16_000, ", ".join(p.name for p in result.files))
    return 0
