"""`mmface4d decode | encode | info | export`: mesh nut triplets and dataset files from the shell."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mmface4d_stream.errors import InputError
from mmface4d_stream.formats.color_mp4 import ColorMp4Reader
from mmface4d_stream.formats.depth_nut import DepthNutReader
from mmface4d_stream.formats.faces import load_faces, write_obj, write_ply
from mmface4d_stream.formats.mesh_nut import (
    MeshNutReader, MeshNutWriter, frame_side, mesh_nut_paths, mesh_prefix_of, read_frame_header)
from mmface4d_stream.formats.mesh_verify import MeshIssue, TemporalSpikes, verify_mesh_sequence
from mmface4d_stream.formats.output_files import check_output_dir, remove_quietly, replacing, reserve_npy
from mmface4d_stream.formats.sequence import DatasetSequence

log = logging.getLogger(__name__)


def _progress(total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit="frame", file=sys.stderr, dynamic_ncols=True, leave=False)


def _open_mesh(args: argparse.Namespace) -> MeshNutReader:
    """Open the triplet; an unfinished (truncated) one is an error unless --allow-truncated."""
    reader = MeshNutReader(args.prefix, n_vertices=args.vertices, strict=getattr(args, "strict", False))
    if not reader.finalized and not args.allow_truncated:
        reader.close()
        raise InputError(f"truncated (its writer did not finish); {len(reader)} complete frames can be read "
                         "with --allow-truncated", reader.prefix)
    return reader


def cmd_decode(args: argparse.Namespace) -> int:
    out = Path(args.out)
    check_output_dir(out.parent, create=True)
    with _open_mesh(args) as reader:
        with replacing(out) as partial:
            # Blocks reserved up front: a full disk is an error here, not a SIGBUS in the loop.
            array = reserve_npy(partial, (len(reader), reader.n_vertices, 3), np.float32, report_as=out)
            spikes = TemporalSpikes()
            with _progress(len(reader), "decode") as bar:
                for index, vertices in enumerate(reader):
                    array[index] = vertices
                    spikes.add(vertices)
                    bar.update()
            _report_issues(spikes.spikes(), reader.prefix, args.strict)
            array.flush()
            del array
        print(f"wrote {out}: {len(reader)} frames x {reader.n_vertices} vertices x 3 (float32, metres)",
              file=sys.stderr)
    return 0


def _report_issues(issues: list[MeshIssue], prefix: str, strict: bool) -> None:
    """Warn about each damaged-looking frame; under `strict` the first one is the error."""
    if issues and strict:
        more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
        raise InputError(f"damaged frame: {issues[0].reason}{more}", prefix, frame=issues[0].frame)
    for issue in issues:
        log.warning("%s", issue.describe(prefix))


def cmd_encode(args: argparse.Namespace) -> int:
    src = Path(args.array)
    if not src.is_file():
        raise InputError("file not found", src)
    try:
        array = np.load(src, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise InputError(f"not a .npy array ({exc})", src) from None
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] == 0:
        raise InputError(f"expected an array of shape (frames, vertices, 3), got {array.shape}", src)
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"expected float coordinates, got {array.dtype}", src)
    check_output_dir(Path(args.out).parent, create=True)
    with MeshNutWriter(args.out, fps=args.fps, atomic=True) as writer, _progress(len(array), "encode") as bar:
        for index in range(array.shape[0]):
            frame = np.asarray(array[index])
            if not np.isfinite(frame).all():
                raise InputError("coordinates contain NaN or inf", src, frame=index)
            writer.write(frame)
            bar.update()
    paths = ", ".join(str(p) for p in mesh_nut_paths(args.out))
    print(f"wrote {paths}: {array.shape[0]} frames, {array.shape[1]} vertices, side {frame_side(array.shape[1])}",
          file=sys.stderr)
    return 0


def describe_mesh(prefix: str, n_vertices: int | None = None) -> dict:
    """JSON-able summary of a mesh nut triplet, with its bounding box in metres (decodes every frame,
    warning about frames that look damaged, see `MeshNutReader`)."""
    with MeshNutReader(prefix, n_vertices=n_vertices) as reader:
        lo = np.full(3, np.inf, dtype=np.float64)
        hi = np.full(3, -np.inf, dtype=np.float64)
        with _progress(len(reader), "info") as bar:
            for vertices in reader:
                np.minimum(lo, vertices.min(axis=0), out=lo)
                np.maximum(hi, vertices.max(axis=0), out=hi)
                bar.update()
        return {
            "kind": "mesh_sequence", "path": reader.prefix, "frames": len(reader),
            "vertices": reader.n_vertices, "vertices_inferred": n_vertices is None, "frame_side": reader.side,
            "fps": reader.fps, "duration_s": len(reader) / reader.fps, "finalized": reader.finalized,
            "bbox_m": {"min": [round(float(v), 6) for v in lo], "max": [round(float(v), 6) for v in hi]},
        }


def _looks_like_mesh_file(path: Path) -> bool:
    """Square frames whose first four pixels hold a finite float32 range: a mesh coordinate file."""
    with DepthNutReader(path) as reader:
        if reader.width != reader.height or len(reader) == 0:
            return False
        lo, hi = read_frame_header(reader[0])
        return bool(np.isfinite(lo) and np.isfinite(hi) and hi > lo and hi - lo < 1e3)


def describe_path(path_text: str, n_vertices: int | None = None) -> dict:
    """Identify what PATH is (mesh prefix, depth nut, mp4, MKV, dataset sequence) and summarize it."""
    path = Path(path_text)
    suffix = path.suffix.lower()
    if suffix == ".mkv":
        if not path.is_file():
            raise InputError("file not found", path)
        from mmface4d_stream.k4a.mkv_describe import describe_mkv

        return {"kind": "kinect_mkv", **describe_mkv(path)}
    if suffix == ".mp4":
        with ColorMp4Reader(path) as reader:
            return {"kind": "color_video", "path": str(path), "frames": len(reader),
                    "resolution": [reader.width, reader.height], "fps": reader.fps,
                    "duration_s": len(reader) / reader.fps}
    if suffix == ".nut":
        if not path.is_file():
            raise InputError("file not found", path)
        prefix = mesh_prefix_of(path)
        if prefix != str(path) and _looks_like_mesh_file(path):
            return describe_mesh(prefix, n_vertices)
        with DepthNutReader(path) as reader:
            return {"kind": "depth_video", "path": str(path), "frames": len(reader),
                    "resolution": [reader.width, reader.height], "fps": reader.fps,
                    "duration_s": len(reader) / reader.fps, "units": "mm", "finalized": reader.finalized}
    if all(p.is_file() for p in mesh_nut_paths(path)) and _looks_like_mesh_file(mesh_nut_paths(path)[0]):
        return describe_mesh(str(path), n_vertices)
    if path.is_dir() or any(path.parent.glob(f"{path.name}_*.json")) or any(path.parent.glob(f"{path.name}_*.mp4")):
        return DatasetSequence(path).summary()
    raise InputError("not found: expected a mesh prefix, a .nut, .mp4 or .mkv file, or a dataset sequence", path)


def verify_mesh(path_text: str, n_vertices: int | None, strict: bool) -> dict:
    """`info --verify`: what `verify_mesh_sequence` found, with the sequence's layout (no bounding
    box: a damaged frame has no meaningful one)."""
    prefix = mesh_prefix_of(path_text)
    if not all(p.is_file() for p in mesh_nut_paths(prefix)):
        raise InputError("--verify checks a mesh sequence: expected PREFIX with PREFIX_0/1/2.nut", path_text)
    with MeshNutReader(prefix, n_vertices=n_vertices, verify=False) as reader:
        summary = {"kind": "mesh_sequence", "path": reader.prefix, "frames": len(reader),
                   "vertices": reader.n_vertices, "vertices_inferred": n_vertices is None, "frame_side": reader.side,
                   "fps": reader.fps, "finalized": reader.finalized, "decoding": [d.value for d in reader.decoding]}
    with _progress(summary["frames"], "verify") as bar:
        report = verify_mesh_sequence(prefix, n_vertices, progress=bar.update)
    _report_issues(report.issues, prefix, strict)
    summary["verify"] = {"ok": not report.issues, "issues": [issue._asdict() for issue in report.issues],
                         "spike_threshold_m": round(report.spike_threshold_m, 6)}
    return summary


def cmd_info(args: argparse.Namespace) -> int:
    if args.verify:
        print(json.dumps(verify_mesh(args.path, args.vertices, args.strict)))
    else:
        print(json.dumps(describe_path(args.path, args.vertices), allow_nan=False))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write one file per frame; on any error the files this run wrote are removed again."""
    out_dir = check_output_dir(args.out, create=True)
    writer = write_obj if args.format == "obj" else write_ply
    with _open_mesh(args) as reader:
        faces = load_faces(args.faces, reader.n_vertices)
        written: list[Path] = []
        try:
            with _progress(len(reader), f"export {args.format}") as bar:
                for index, vertices in enumerate(reader):
                    target = out_dir / f"frame_{index:06d}.{args.format}"
                    with replacing(target) as partial:
                        writer(partial, vertices, faces)
                    written.append(target)
                    bar.update()
        except BaseException:
            remove_quietly(*written)
            raise
        print(f"wrote {len(reader)} {args.format} files to {out_dir}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("decode", help="decode a mesh nut triplet to a float32 (T, N, 3) .npy",
                       description="Decode PREFIX_0.nut, PREFIX_1.nut, PREFIX_2.nut (x, y, z) to one .npy array "
                                   "of shape (frames, vertices, 3), float32 metres. Streams: memory stays constant.")
    p.add_argument("prefix", help="mesh prefix (or one of its _0/_1/_2.nut files)")
    p.add_argument("--vertices", type=int, default=None,
                   help="vertex count N (35709 for the BFM front model); inferred from the data when omitted")
    p.add_argument("--out", required=True, help="output .npy path")
    p.add_argument("--allow-truncated", action="store_true",
                   help="read the complete frames of files whose writer was killed")
    p.add_argument("--strict", action="store_true",
                   help="a frame that looks damaged (impossible values, a jump away from both neighbours) is an "
                        "error, not a warning")
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("encode", help="encode a (T, N, 3) .npy to a mesh nut triplet",
                       description="Encode a float (frames, vertices, 3) .npy array in metres to PREFIX_0/1/2.nut "
                                   "(FFV1 gray16le, the MMFace4D mesh format).")
    p.add_argument("array", help="input .npy of shape (frames, vertices, 3)")
    p.add_argument("--out", required=True, help="output prefix")
    p.add_argument("--fps", type=int, default=30, help="frame rate stored in the files (default 30)")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("info", help="describe a mesh prefix, depth nut, mp4, MKV or dataset sequence as JSON",
                       description="Print one JSON object describing PATH: kind, frames, vertices or resolution, "
                                   "fps, duration, and the bounding box of a mesh sequence.")
    p.add_argument("path", help="mesh prefix, .nut, .mp4, .mkv, or <dir>/<name> of a dataset sequence")
    p.add_argument("--vertices", type=int, default=None, help="vertex count of a mesh sequence (else inferred)")
    p.add_argument("--verify", action="store_true",
                   help="check every frame of a mesh sequence for damage checksum-less files cannot report "
                        "(impossible header or quantized values, frames that jump away from both neighbours)")
    p.add_argument("--strict", action="store_true", help="with --verify: a finding is an error (exit 2)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("export", help="export each frame of a mesh sequence as OBJ or PLY",
                       description="Write DIR/frame_000000.obj (or .ply), one file per frame of the mesh sequence.")
    p.add_argument("prefix", help="mesh prefix")
    p.add_argument("--vertices", type=int, default=None, help="vertex count N (else inferred)")
    p.add_argument("--faces", required=True, help="triangles: .npy, .pkl (e.g. bfm_faces.pkl) or .obj")
    p.add_argument("--format", choices=("obj", "ply"), default="obj", help="output format (default obj)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--allow-truncated", action="store_true",
                   help="export the complete frames of files whose writer was killed")
    p.set_defaults(func=cmd_export)
