"""MMFace4D mesh sequences: `<prefix>_0.nut`, `_1.nut`, `_2.nut` hold the x, y and z coordinates.

Each file is a NUT container with one FFV1 gray16le video stream at 30 fps and square frames of
side `s = ceil(sqrt(N + 4))`. A frame, flattened row-major, holds:

- pixels 0-1: float32 `min` (its 4 bytes read as two little-endian uint16), pixels 2-3: float32 `max`;
- pixels 4 .. 4+N: `q = round((v - min) / (max - min) * 2**16)` as uint16 (q = 65536 clipped to 65535);
- zeros after that.

Writers use `min = v.min() - 0.05` and `max = v.max() + 0.05` (metres), per file and per frame.
Decoding is `v = q / 2**16 * (max - min) + min` in float32, which reproduces the released dataset's
decoder. The worst-case error per coordinate is half a quantization step, (max - min) / 2**17.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from mmface4d_stream.errors import InputError
from mmface4d_stream.formats.gray16_video import (DECODER_THREADS, Decoding, Gray16VideoReader,
                                                     Gray16VideoWriter)
from mmface4d_stream.formats.output_files import remove_quietly

log = logging.getLogger(__name__)

HEADER_PIXELS = 4
QUANT_LEVELS = 65536
MARGIN_M = 0.05
# Every frame a keyframe: exact random access with one packet decoded, and damage to one frame does
# not spread to the next. One slice per (small) frame keeps the files within ~2 % of the released
# ones per frame (124,190 against 121,842 bytes, `benchmarks/codec.py`): more slices cost more.
FFV1_OPTIONS = {"g": "1", "slices": "1"}


def frame_side(n_vertices: int) -> int:
    """Side in pixels of the square frame holding `n_vertices` coordinates plus the 4-pixel header."""
    if n_vertices <= 0:
        raise ValueError(f"vertex count must be positive, got {n_vertices}")
    return math.isqrt(n_vertices + HEADER_PIXELS - 1) + 1


def vertex_count_fits(n_vertices: int, side: int) -> bool:
    """True when a sequence of `n_vertices` vertices is stored in frames of `side` pixels."""
    return n_vertices > 0 and frame_side(n_vertices) == side


def mesh_nut_paths(prefix: str | os.PathLike) -> tuple[Path, Path, Path]:
    """The x, y and z file paths of a mesh prefix (`a/b/seq` -> `a/b/seq_0.nut`, ...)."""
    prefix = str(prefix)
    return tuple(Path(f"{prefix}_{axis}.nut") for axis in range(3))  # type: ignore[return-value]


def mesh_prefix_of(path: str | os.PathLike) -> str:
    """Accept a prefix or one of its three files and return the prefix."""
    text = str(path)
    for axis in range(3):
        suffix = f"_{axis}.nut"
        if text.endswith(suffix):
            return text[: -len(suffix)]
    return text


def encode_coordinate_frame(values: np.ndarray, side: int) -> np.ndarray:
    """Quantize one axis of one frame.

    Args:
        values: float32 (N,) coordinates in metres, finite.
        side: frame side, at least `frame_side(N)`.
    Returns:
        uint16 (side, side) frame with the min/max header and the quantized coordinates.
    """
    values = np.asarray(values, dtype=np.float32)
    lo = np.float32(values.min() - MARGIN_M)
    hi = np.float32(values.max() + MARGIN_M)
    scale = np.float32(QUANT_LEVELS) / (hi - lo)
    q = np.rint((values - lo) * scale)
    np.clip(q, 0, QUANT_LEVELS - 1, out=q)
    frame = np.zeros(side * side, dtype=np.uint16)
    frame[0:2] = np.array([lo], dtype="<f4").view("<u2")
    frame[2:4] = np.array([hi], dtype="<f4").view("<u2")
    frame[HEADER_PIXELS : HEADER_PIXELS + values.size] = q
    return frame.reshape(side, side)


class QuantizationRange(NamedTuple):
    lo: np.float32
    hi: np.float32


def read_frame_header(frame: np.ndarray) -> QuantizationRange:
    """The float32 (min, max) stored in the first four pixels of a uint16 frame."""
    flat = np.ascontiguousarray(frame.reshape(-1)[:HEADER_PIXELS], dtype="<u2")
    lo, hi = flat.view("<f4")
    return QuantizationRange(lo, hi)


def decode_coordinate_frame(frame: np.ndarray, n_vertices: int) -> np.ndarray:
    """Inverse of `encode_coordinate_frame`: uint16 (side, side) -> float32 (N,) metres."""
    lo, hi = read_frame_header(frame)
    q = frame.reshape(-1)[HEADER_PIXELS : HEADER_PIXELS + n_vertices]
    return q.astype(np.float32) / np.float32(QUANT_LEVELS) * (hi - lo) + lo


def infer_vertex_count(frame: np.ndarray) -> int:
    """Guess N from one frame: the last non-zero coordinate pixel.

    Exact for files written with the 5 cm margin (every q is then > 0); a frame whose last vertices
    sit exactly at `min` would be under-counted, so prefer a known N when there is one.
    """
    flat = frame.reshape(-1)[HEADER_PIXELS:]
    nonzero = np.flatnonzero(flat)
    if nonzero.size == 0:
        raise ValueError("frame holds no coordinates")
    return int(nonzero[-1]) + 1


class MeshNutWriter:
    """Stream a mesh sequence to a nut triplet, frame by frame.

    Use as a context manager: the three files are finalized on leaving the block, also on an
    exception or Ctrl-C, so every frame written before stays decodable.

    Args:
        prefix: output prefix; files `<prefix>_0.nut` (x), `_1.nut` (y), `_2.nut` (z).
        fps: frame rate stored in the files (the dataset uses 30).
        atomic: write to hidden temporary files, renamed into place by a successful close.
    """

    def __init__(self, prefix: str | os.PathLike, fps: int = 30, atomic: bool = False):
        self.prefix = str(prefix)
        self.fps = fps
        self.atomic = atomic
        self.n_vertices: int | None = None
        self.side: int | None = None
        self.frames_written = 0
        self._writers: list[Gray16VideoWriter] = []

    def _open(self, n_vertices: int) -> None:
        self.n_vertices = n_vertices
        self.side = frame_side(n_vertices)
        for path in mesh_nut_paths(self.prefix):
            self._writers.append(
                Gray16VideoWriter(path, self.side, self.side, fps=self.fps, atomic=self.atomic,
                                  codec_options=FFV1_OPTIONS)
            )

    def write(self, vertices: np.ndarray) -> None:
        """Append one frame of vertices, float (N, 3) in metres; N is fixed by the first frame."""
        vertices = np.asarray(vertices)
        if vertices.ndim != 2 or vertices.shape[1] != 3:
            raise InputError(f"expected vertices of shape (N, 3), got {vertices.shape}",
                             self.prefix, frame=self.frames_written)
        if not np.isfinite(vertices).all():
            bad = int((~np.isfinite(vertices)).any(axis=1).sum())
            raise InputError(f"{bad} vertices are NaN or inf", self.prefix, frame=self.frames_written)
        if self.n_vertices is None:
            self._open(vertices.shape[0])
        elif vertices.shape[0] != self.n_vertices:
            raise InputError(f"expected {self.n_vertices} vertices, got {vertices.shape[0]}",
                             self.prefix, frame=self.frames_written)
        vertices = vertices.astype(np.float32, copy=False)
        for axis, writer in enumerate(self._writers):
            writer.write(encode_coordinate_frame(vertices[:, axis], self.side))
        self.frames_written += 1

    def close(self, success: bool = True) -> None:
        """Finalize the three files (idempotent).

        When any of them met a write error (full disk, ...) all three are removed: a triplet with
        one axis cut short is not a result. Otherwise frames written stay decodable.
        """
        writers, self._writers = self._writers, []
        first_error = None
        for writer in writers:
            try:
                writer.close(success=success)
            except Exception as exc:  # finalize the others before reporting
                first_error = first_error or exc
        if any(writer.write_error is not None for writer in writers):
            remove_quietly(*mesh_nut_paths(self.prefix))
        if first_error is not None:
            raise first_error

    def __enter__(self) -> "MeshNutWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(success=exc_type is None)


class MeshNutReader:
    """Stream a mesh sequence from a nut triplet.

    Iterating yields float32 (N, 3) frames in metres with constant memory; `reader[i]` decodes frame
    `i` by seeking. `n_vertices` defaults to the count inferred from the first frame.

    Files with FFV1 slice CRCs (what `MeshNutWriter` writes) decode on FFmpeg's frame threads, the
    three files interleaved in this process, which keeps all cores busy; every packet's CRCs are
    checked before decoding, so a damaged frame is an `InputError` naming its file and index. Files
    without CRCs (the released dataset) decode on one thread with FFmpeg's error log watched.
    See `Gray16VideoReader`.

    Files without CRCs cannot tell a damaged frame from a good one; with `verify` (default) every
    coordinate frame is checked for what no writer produces (`mesh_verify.coordinate_frame_problems`)
    and a finding is logged as a warning naming the file and frame, or raised as `InputError` with
    `strict`.

    Args:
        prefix: the triplet's prefix, or one of its three files.
        n_vertices: vertices per frame; inferred from the first frame when None.
        threads: decoder threads per file (1: decode on the calling thread only).
        verify: check each frame's header and quantized values (see above).
        strict: a failed check is an error instead of a warning.

    A triplet whose files hold different numbers of frames is an error, unless some file was left
    unfinished by a killed writer: then the complete frames common to all three are read.
    """

    def __init__(self, prefix: str | os.PathLike, n_vertices: int | None = None,
                 threads: int = DECODER_THREADS, verify: bool = True, strict: bool = False):
        self.prefix = mesh_prefix_of(prefix)
        self.verify, self.strict = verify, strict
        self.problems: list[str] = []
        paths = mesh_nut_paths(self.prefix)
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise InputError(f"missing mesh file(s) {', '.join(missing)}", self.prefix)
        self._readers: list[Gray16VideoReader] = []
        try:
            for path in paths:
                self._readers.append(Gray16VideoReader(path, threads=threads))
            self._check_layout(n_vertices)
        except Exception:
            self.close()
            raise

    def _check_layout(self, n_vertices: int | None) -> None:
        first = self._readers[0]
        for reader in self._readers:
            if reader.width != reader.height:
                raise InputError(f"frames are {reader.width}x{reader.height}, mesh files have square frames",
                                 reader.path)
            if reader.width != first.width:
                raise InputError(f"frame side {reader.width} differs from {first.path.name}'s {first.width}",
                                 reader.path)
        self.side = first.width
        counts = [len(r) for r in self._readers]
        if len(set(counts)) > 1:
            if all(r.finalized for r in self._readers):
                detail = ", ".join(f"{r.path.name}: {c}" for r, c in zip(self._readers, counts))
                raise InputError(f"x/y/z files hold different frame counts ({detail})", self.prefix)
        self._n_frames = min(counts)
        if self._n_frames == 0:
            raise InputError("mesh files hold no complete frame", self.prefix)
        if n_vertices is None:
            n_vertices = infer_vertex_count(first[0])
        if not vertex_count_fits(n_vertices, self.side):
            lo = (self.side - 1) ** 2 - HEADER_PIXELS + 1
            hi = self.side**2 - HEADER_PIXELS
            raise InputError(
                f"{n_vertices} vertices do not fit frames of side {self.side} "
                f"(that side holds {max(lo, 1)}..{hi} vertices)", self.prefix)
        self.n_vertices = int(n_vertices)
        self.fps = first.fps
        # The margin convention is learned from frame 0 of each file (a file by another writer
        # that does not follow it only gets the header and padding checks).
        # (`mesh_verify` builds on this module's constants: imported here, not at module level.)
        from mmface4d_stream.formats.mesh_verify import coordinate_frame_problems

        self._frame_problems = coordinate_frame_problems
        self._margin_rule = [self.verify and self._follows_margin_rule(r) for r in self._readers]

    def _follows_margin_rule(self, reader: Gray16VideoReader) -> bool:
        from mmface4d_stream.formats.mesh_verify import follows_margin_rule

        try:
            return follows_margin_rule(reader[0], self.n_vertices)
        except InputError:
            return False  # a damaged frame 0 is reported when it is read

    @property
    def finalized(self) -> bool:
        return all(r.finalized for r in self._readers)

    def __len__(self) -> int:
        return self._n_frames

    @property
    def n_frames(self) -> int:
        return self._n_frames

    def _decode(self, frames: tuple[np.ndarray, np.ndarray, np.ndarray], index: int) -> np.ndarray:
        if self.verify:
            for axis, (reader, frame) in enumerate(zip(self._readers, frames)):
                for reason in self._frame_problems(frame, self.n_vertices, self._margin_rule[axis]):
                    if self.strict:
                        raise InputError(f"damaged frame: {reason}", reader.path, frame=index)
                    message = f"{reader.path} (frame {index}): damaged frame? {reason}"
                    self.problems.append(message)
                    log.warning("%s", message)
        return self.decode_raw(frames, index)

    def decode_raw(self, frames: tuple[np.ndarray, np.ndarray, np.ndarray], index: int) -> np.ndarray:
        """The float32 (N, 3) vertices in metres of one frame's three uint16 coordinate frames."""
        out = np.empty((self.n_vertices, 3), dtype=np.float32)
        for axis, (reader, frame) in enumerate(zip(self._readers, frames)):
            lo, hi = read_frame_header(frame)
            if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
                raise InputError(f"invalid quantization range ({lo}, {hi})", reader.path, frame=index)
            out[:, axis] = decode_coordinate_frame(frame, self.n_vertices)
        return out

    @property
    def decoding(self) -> tuple[Decoding, Decoding, Decoding]:
        """How each of the x, y and z files is decoded and checked."""
        return tuple(r.decoding for r in self._readers)  # type: ignore[return-value]

    def raw_frames(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frame `index` of the x, y and z files, uint16 (side, side) each, undecoded."""
        return tuple(r[index] for r in self._readers)  # type: ignore[return-value]

    def iter_raw(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The x, y and z uint16 frames of every frame, in order, undecoded and unchecked."""
        iterators = [iter(r) for r in self._readers]
        for _ in range(self._n_frames):
            yield tuple(next(it) for it in iterators)  # type: ignore[misc]

    def __iter__(self) -> Iterator[np.ndarray]:
        # Interleaved generators: while this thread reads one file, the others' frame threads decode.
        iterators = [iter(r) for r in self._readers]
        for index in range(self._n_frames):
            yield self._decode(tuple(next(it) for it in iterators), index)

    def __getitem__(self, index: int) -> np.ndarray:
        if index < 0:
            index += self._n_frames
        if not 0 <= index < self._n_frames:
            raise IndexError(f"{self.prefix}: frame {index} out of range (0..{self._n_frames - 1})")
        return self._decode(tuple(r[index] for r in self._readers), index)

    def close(self) -> None:
        for reader in self._readers:
            reader.close()

    def __enter__(self) -> "MeshNutReader":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
