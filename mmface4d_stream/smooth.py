"""Temporal smoothing of mesh sequences: causal (streaming) and zero-phase (offline) Butterworth.

- `CausalButterworth` filters frame by frame with state carried between calls, for the live
  graph. A causal IIR filter lags: with the defaults (order 5, 5 Hz cutoff at 30 fps) the group
  delay is about 2.8 frames (93 ms) for slow motion, rising to about 5.7 frames at the cutoff
  (`group_delay_frames`).
- `smooth_4d` is the upstream MMFace4D post-process (``reconstruction/smooth_4d.py``): Butterworth
  order 5, 5 Hz at 30 fps as (b, a) coefficients, each vertex coordinate's track padded by
  repeating the first and last frame 3 times, then `scipy.signal.filtfilt` with its default
  odd-extension padding (zero phase, no lag), padding cut off again.
- `smooth_mesh_nut` applies `smooth_4d` to a mesh nut triplet on disk with bounded memory.

Reference: S. Butterworth, "On the theory of filter amplifiers", Wireless Engineer 7, 1930;
F. Gustafsson, "Determining the initial states in forward-backward filtering", IEEE TSP 44(4), 1996
(the initial conditions `filtfilt` uses).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy import signal

from mmface4d_stream.formats.sequence import DATASET_FPS

log = logging.getLogger(__name__)

# The one place of the smoothing defaults (the upstream design: order 5, 5 Hz at the dataset's 30 fps);
# `pipeline.stage_config.SmoothStageConfig`, the stages and the CLI take them from here.
DEFAULT_CUTOFF_HZ = 5.0
DEFAULT_ORDER = 5
DEFAULT_FPS = float(DATASET_FPS)
UPSTREAM_PAD_FRAMES = 3
# Working memory for one vertex chunk in `smooth_mesh_nut` (float64 copies inside filtfilt).
DEFAULT_CHUNK_BYTES = 256 << 20
# filtfilt keeps about this many float64 arrays of the padded chunk alive at once.
_FILTFILT_COPIES = 6


def check_butterworth_design(cutoff_hz: float, order: int, fps: float) -> None:
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if not 0 < cutoff_hz < fps / 2:
        raise ValueError(f"cutoff must lie in (0, {fps / 2}) Hz (below Nyquist at {fps} fps), got {cutoff_hz}")
    if order < 1:
        raise ValueError(f"filter order must be >= 1, got {order}")


def _output_dtype(dtype: np.dtype) -> np.dtype:
    return dtype if dtype in (np.float32, np.float64) else np.dtype(np.float64)


class CausalButterworth:
    """Streaming low-pass Butterworth filter applied along time to arrays of any frame shape.

    Each element of the frame (e.g. each vertex coordinate of an (N, 3) mesh) is filtered
    independently; coefficients are second-order sections (`butter(..., output="sos")`) run by
    `scipy.signal.sosfilt`, float64 inside, with the section state carried across calls.

    Initialization (`init`), chosen at the first frame after construction or `reset()`:

    - ``"steady"`` (default): the state is the filter's steady state for a constant input equal
      to the first frame (`sosfilt_zi(sos) * x[0]`), so a still face comes out unchanged from
      frame 0 instead of rising from the origin. Output equals
      ``sosfilt(sos, x, axis=0, zi=sosfilt_zi(sos)[..., None] * x[0])`` over the whole sequence.
    - ``"zero"``: zero state; output equals ``sosfilt(sos, x, axis=0)`` over the whole sequence
      (with the start transient that implies).

    Args:
        cutoff_hz: -3 dB frequency in Hz (default 5).
        order: filter order (default 5).
        fps: frame rate in Hz (default 30).
        init: "steady" or "zero".
    """

    def __init__(
        self,
        cutoff_hz: float = DEFAULT_CUTOFF_HZ,
        order: int = DEFAULT_ORDER,
        fps: float = DEFAULT_FPS,
        init: str = "steady",
    ):
        check_butterworth_design(cutoff_hz, order, fps)
        if init not in ("steady", "zero"):
            raise ValueError(f"init must be 'steady' or 'zero', got {init!r}")
        self.cutoff_hz = float(cutoff_hz)
        self.order = int(order)
        self.fps = float(fps)
        self.init = init
        self.sos = signal.butter(self.order, self.cutoff_hz, btype="low", fs=self.fps, output="sos")
        self._zi: np.ndarray | None = None
        self._frame_shape: tuple[int, ...] | None = None

    def reset(self) -> None:
        """Forget the state; the next frame starts a new sequence (and may have a new shape)."""
        self._zi = None
        self._frame_shape = None

    def state(self) -> dict:
        """The filter's state after the last frame (picklable): {"zi": (sections, 2, elements) float64
        or None before the first frame, "frame_shape": the frames' shape or None}."""
        return {"zi": None if self._zi is None else self._zi.copy(), "frame_shape": self._frame_shape}

    def restore(self, state: dict) -> None:
        """Continue from a `state()` of a filter with the same design (cutoff, order, fps, init)."""
        self._zi = None if state["zi"] is None else np.array(state["zi"], dtype=np.float64)
        self._frame_shape = None if state["frame_shape"] is None else tuple(state["frame_shape"])

    def filter(self, frames: np.ndarray) -> np.ndarray:
        """Filter a chunk of consecutive frames, shape (T, *frame_shape); returns the same shape.

        float32 input gives float32 output, float64 gives float64, anything else float64.
        """
        frames = np.asarray(frames)
        if frames.ndim < 1:
            raise ValueError("frames must have a leading time axis, shape (T, ...)")
        frame_shape = frames.shape[1:]
        if self._frame_shape is not None and frame_shape != self._frame_shape:
            raise ValueError(
                f"frame shape changed from {self._frame_shape} to {frame_shape}; call reset() between sequences"
            )
        out_dtype = _output_dtype(frames.dtype)
        if frames.shape[0] == 0:
            return np.empty(frames.shape, dtype=out_dtype)
        x = frames.reshape(frames.shape[0], -1).astype(np.float64, copy=False)
        if self._zi is None:
            self._frame_shape = frame_shape
            if self.init == "steady":
                self._zi = signal.sosfilt_zi(self.sos)[:, :, None] * x[0][None, None, :]
            else:
                self._zi = np.zeros((self.sos.shape[0], 2, x.shape[1]))
        y, self._zi = signal.sosfilt(self.sos, x, axis=0, zi=self._zi)
        return y.reshape(frames.shape).astype(out_dtype, copy=False)

    def process(self, frame: np.ndarray) -> np.ndarray:
        """Filter one frame (any shape, e.g. (N, 3) metres); returns the smoothed frame."""
        frame = np.asarray(frame)
        return self.filter(frame[None])[0]

    __call__ = process

    def group_delay_frames(self, frequency_hz: float = 0.0) -> float:
        """Group delay (lag) in frames at `frequency_hz` (default: for slow motion, 0 Hz).

        With the defaults: 2.80 frames at 0 Hz, 3.63 at 3 Hz, 5.74 at the 5 Hz cutoff.
        """
        b, a = signal.sos2tf(self.sos)
        _, delay = signal.group_delay((b, a), w=[float(frequency_hz)], fs=self.fps)
        return float(delay[0])


def butter_ba(cutoff_hz: float = DEFAULT_CUTOFF_HZ, order: int = DEFAULT_ORDER, fps: float = DEFAULT_FPS):
    """(b, a) low-pass Butterworth coefficients as upstream designs them."""
    check_butterworth_design(cutoff_hz, order, fps)
    return signal.butter(order, cutoff_hz, btype="low", fs=fps)


def smooth_4d(
    frames: np.ndarray,
    cutoff_hz: float = DEFAULT_CUTOFF_HZ,
    order: int = DEFAULT_ORDER,
    fps: float = DEFAULT_FPS,
    pad_frames: int = UPSTREAM_PAD_FRAMES,
) -> np.ndarray:
    """Zero-phase low-pass of a whole sequence, as upstream's `smooth_4d.py`.

    Args:
        frames: (T, ...) e.g. (T, N, 3) vertices in metres; filtered along axis 0.
        cutoff_hz, order, fps: Butterworth design (defaults 5 Hz, order 5, 30 fps).
        pad_frames: first/last frame repeated this many times before filtering (upstream: 3).
    Returns:
        Smoothed array of the same shape; float32 for float32 input (as upstream stores it),
        float64 otherwise.

    `filtfilt` additionally extends each track by odd reflection over 3·max(len(a), len(b))
    samples (18 for order 5); sequences too short for that (fewer than 13 frames with the
    defaults) use the longest extension that fits, which upstream would reject.
    """
    frames = np.asarray(frames)
    if frames.ndim < 1 or frames.shape[0] == 0:
        raise ValueError(f"frames must have shape (T, ...) with T >= 1, got {frames.shape}")
    if pad_frames < 0:
        raise ValueError(f"pad_frames must be >= 0, got {pad_frames}")
    b, a = butter_ba(cutoff_hz, order, fps)
    n = frames.shape[0]
    x = frames.reshape(n, -1).astype(np.float64, copy=False)
    if pad_frames:
        x = np.concatenate([np.repeat(x[:1], pad_frames, axis=0), x, np.repeat(x[-1:], pad_frames, axis=0)])
    padlen = 3 * max(len(a), len(b))
    if x.shape[0] <= padlen:
        log.warning(
            "sequence of %d frames is shorter than filtfilt's %d-sample edge extension; using %d",
            n, padlen, x.shape[0] - 1,
        )
        padlen = x.shape[0] - 1
    y = signal.filtfilt(b, a, x, axis=0, padlen=padlen)
    if pad_frames:
        y = y[pad_frames:-pad_frames]
    return y.reshape(frames.shape).astype(_output_dtype(frames.dtype), copy=False)


class SmoothFileResult(NamedTuple):
    """What `smooth_mesh_nut` did: frames and vertices processed, vertex chunks used."""

    n_frames: int
    n_vertices: int
    n_chunks: int


def chunk_columns(n_frames: int, n_columns: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """How many coordinate tracks `smooth_mesh_nut` filters at once within `chunk_bytes`."""
    padded = n_frames + 2 * UPSTREAM_PAD_FRAMES + 2 * 3 * (DEFAULT_ORDER + 1)
    per_column = padded * 8 * _FILTFILT_COPIES
    return int(max(1, min(n_columns, chunk_bytes // per_column)))


def smooth_mesh_nut(
    in_prefix: str | os.PathLike,
    out_prefix: str | os.PathLike,
    *,
    n_vertices: int | None = None,
    cutoff_hz: float = DEFAULT_CUTOFF_HZ,
    order: int = DEFAULT_ORDER,
    fps: float = DEFAULT_FPS,
    pad_frames: int = UPSTREAM_PAD_FRAMES,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    tmp_dir: str | os.PathLike | None = None,
    progress: Callable[[int], None] | None = None,
    allow_truncated: bool = False,
) -> SmoothFileResult:
    """`smooth_4d` from one mesh nut triplet to another with bounded memory.

    A zero-phase filter needs each coordinate's whole track, so the decoded sequence goes to a
    temporary float32 file of T × N × 3 × 4 bytes (beside the output unless `tmp_dir` is given;
    e.g. 128 MB for 300 frames of 35709 vertices), memory-mapped. Tracks are then filtered in
    chunks of columns (`chunk_columns`, within about `chunk_bytes` of working memory) and written
    back in place; finally the frames are encoded one by one. Resident memory is therefore about
    `chunk_bytes` plus a few frames, whatever the sequence length; the page cache holds what it
    can of the temporary file. The result equals `smooth_4d` on the whole decoded sequence.

    Args:
        in_prefix, out_prefix: mesh nut prefixes (`<prefix>_{0,1,2}.nut`); output written atomically.
        n_vertices: vertex count of the input (inferred from the first frame when None).
        allow_truncated: smooth the complete frames of an input whose writer was killed (else that
            is an `InputError`, as for `decode` and `export`).
        progress: called as `progress(n_done, total)` after each unit of work: `n_done` units
            since the last call, `total = 2 * T + n_chunks` (decode, filter chunks, encode).
    """
    from mmface4d_stream.errors import InputError
    from mmface4d_stream.formats.mesh_nut import MeshNutReader, MeshNutWriter
    from mmface4d_stream.formats.output_files import check_output_dir, remove_quietly, reserve_npy

    out_prefix = str(out_prefix)
    out_dir = check_output_dir(Path(out_prefix).resolve().parent, create=True)
    tmp_dir = check_output_dir(tmp_dir, create=True) if tmp_dir is not None else out_dir
    handle, tmp_path = tempfile.mkstemp(prefix=".smooth-", suffix=".npy", dir=tmp_dir)
    os.close(handle)
    try:
        with MeshNutReader(in_prefix, n_vertices=n_vertices) as reader:
            if not reader.finalized and not allow_truncated:
                raise InputError(f"truncated (its writer did not finish); {len(reader)} complete frames can be "
                                 "smoothed with --allow-truncated", reader.prefix)
            n_frames, n_vertices = len(reader), reader.n_vertices
            out_fps = int(round(float(reader.fps))) if reader.fps else int(round(fps))
            n_columns = n_vertices * 3
            per_chunk = chunk_columns(n_frames, n_columns, chunk_bytes)
            n_chunks = -(-n_columns // per_chunk)
            total = 2 * n_frames + n_chunks
            tick = (lambda n: progress(n, total)) if progress else (lambda n: None)
            # Blocks reserved up front: a full disk is an error here, not a SIGBUS while filling the map.
            tracks = reserve_npy(tmp_path, (n_frames, n_columns), np.float32)
            for index, vertices in enumerate(reader):
                tracks[index] = vertices.reshape(-1)
                tick(1)
        log.info(
            "smoothing %d frames x %d vertices in %d chunk(s) of %d tracks",
            n_frames, n_vertices, n_chunks, per_chunk,
        )
        for start in range(0, n_columns, per_chunk):
            stop = min(start + per_chunk, n_columns)
            tracks[:, start:stop] = smooth_4d(
                np.array(tracks[:, start:stop]), cutoff_hz, order, fps, pad_frames
            )
            tick(1)
        with MeshNutWriter(out_prefix, fps=out_fps, atomic=True) as writer:
            for index in range(n_frames):
                writer.write(tracks[index].reshape(n_vertices, 3))
                tick(1)
        del tracks
    finally:
        remove_quietly(tmp_path)
    return SmoothFileResult(n_frames=n_frames, n_vertices=n_vertices, n_chunks=n_chunks)
