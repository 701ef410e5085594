"""Finding damage in mesh nut files that carry no checksums (the released dataset's FFV1 version 1).

One flipped bit in such a file decodes to a plausible-looking frame with thousands of vertices off
by centimetres; FFmpeg reports nothing. What can be detected:

- per coordinate frame (`coordinate_frame_problems`): a min/max header that is not finite, not
  increasing or spans more than any face could; quantized values outside what the writer can
  produce (its 5 cm margin puts the smallest coordinate at `q = round(0.05 / (max - min) * 2**16)`
  and the largest at `2**16` minus that); non-zero padding after the last vertex;
- across frames (`TemporalSpikes`): a frame whose vertices jump away from both neighbours, measured
  as the largest distance of a vertex from the midpoint of its previous and next positions, above
  a robust per-sequence threshold (median + `SPIKE_MADS` scaled MADs, at least `MIN_SPIKE_M`).
  Smooth motion keeps that distance small (it is a second difference); a damaged frame stands out
  as a local maximum, its neighbours showing half of it.

`verify_mesh_sequence` runs both over a whole triplet (`mmface4d info --verify`).
"""

from __future__ import annotations

import math
import os
from typing import Callable, NamedTuple

import numpy as np

from mmface4d_stream.errors import InputError
from mmface4d_stream.formats.mesh_nut import (HEADER_PIXELS, MARGIN_M, QUANT_LEVELS, MeshNutReader,
                                               read_frame_header)

# No face (nor any sane capture) spans this much along an axis, or sits this far from the camera.
MAX_SPAN_M = 10.0
MAX_ABS_M = 100.0
SPIKE_MADS = 12.0
MIN_SPIKE_M = 0.01


class MeshIssue(NamedTuple):
    """One problem found: the frame, the axis file (0, 1, 2; None for a whole-mesh finding), why."""

    frame: int
    axis: int | None
    reason: str

    def describe(self, prefix: str) -> str:
        where = f"{prefix}_{self.axis}.nut" if self.axis is not None else prefix
        return f"{where} (frame {self.frame}): {self.reason}"


def coordinate_frame_problems(frame: np.ndarray, n_vertices: int, margin_rule: bool = True) -> list[str]:
    """What is impossible in one uint16 (side, side) coordinate frame of `n_vertices` vertices.

    `margin_rule`: the file follows the writers' 5 cm margin convention (the released files and
    ours do), so the extreme q values are known exactly from the header. Returns reasons (empty: ok).
    """
    flat = frame.reshape(-1)
    lo, hi = (float(v) for v in read_frame_header(frame))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [f"header min/max ({lo}, {hi}) is not finite"]
    if not hi > lo:
        return [f"header max {hi} is not above min {lo}"]
    if hi - lo > MAX_SPAN_M or max(abs(lo), abs(hi)) > MAX_ABS_M:
        return [f"header range {lo:.3f}..{hi:.3f} m is beyond any face"]
    problems = []
    q = flat[HEADER_PIXELS:HEADER_PIXELS + n_vertices]
    if margin_rule and hi - lo < 2 * MARGIN_M * (1 - 1e-4):
        return [f"header range {hi - lo:.3g} m is narrower than the writer's two {MARGIN_M * 100:.0f} cm margins"]
    if margin_rule:
        edge = MARGIN_M / (hi - lo) * QUANT_LEVELS
        low, high = math.floor(edge) - 1, math.ceil(QUANT_LEVELS - edge) + 1
        outside = int(np.count_nonzero((q < low) | (q > high)))
        if outside:
            problems.append(f"{outside} quantized values outside {low}..{high}, which the writer cannot produce")
        else:
            q_min, q_max = int(q.min()), int(q.max())
            if abs(q_min - edge) > 1 or abs(q_max - (QUANT_LEVELS - edge)) > 1:
                problems.append(f"quantized values span {q_min}..{q_max}, the header implies "
                                f"{edge:.0f}..{QUANT_LEVELS - edge:.0f}")
    padding = flat[HEADER_PIXELS + n_vertices:]
    if padding.size and padding.any():
        problems.append(f"{int(np.count_nonzero(padding))} padding pixels after the last vertex are not zero")
    return problems


def follows_margin_rule(frame: np.ndarray, n_vertices: int) -> bool:
    """Whether a (presumed good) frame was written with the 5 cm margin convention."""
    flat = frame.reshape(-1)
    lo, hi = read_frame_header(frame)
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        return False
    edge = MARGIN_M / float(hi - lo) * QUANT_LEVELS
    q = flat[HEADER_PIXELS:HEADER_PIXELS + n_vertices]
    return abs(int(q.min()) - edge) <= 1 and abs(int(q.max()) - (QUANT_LEVELS - edge)) <= 1


class TemporalSpikes:
    """Streaming detector of frames that jump away from both neighbours (see the module docstring).

    Feed float (N, 3) vertices in frame order with `add` (None for a frame known to be damaged: it
    stands in as a repeat of the previous one); `spikes()` returns `MeshIssue`s. Keeps two frames
    and one float per frame.
    """

    def __init__(self) -> None:
        self._previous: np.ndarray | None = None
        self._current: np.ndarray | None = None
        self._residuals: list[float] = []  # residual of frame k + 1 (interior frames only)

    def add(self, vertices: np.ndarray | None) -> None:
        if vertices is None:
            if self._current is None:
                return
            vertices = self._current
        vertices = np.asarray(vertices, dtype=np.float32)
        if self._previous is not None:
            midpoint = 0.5 * (self._previous + vertices)
            self._residuals.append(float(np.sqrt(((self._current - midpoint) ** 2).sum(axis=1).max())))
        self._previous, self._current = self._current, vertices

    def threshold(self) -> float:
        """The per-sequence spike threshold in metres."""
        if len(self._residuals) < 3:
            return math.inf
        r = np.asarray(self._residuals)
        median = float(np.median(r))
        mad = 1.4826 * float(np.median(np.abs(r - median)))
        return max(MIN_SPIKE_M, median + SPIKE_MADS * mad)

    def spikes(self) -> list[MeshIssue]:
        limit = self.threshold()
        r = self._residuals
        issues = []
        for k, value in enumerate(r):
            before = r[k - 1] if k > 0 else 0.0
            after = r[k + 1] if k + 1 < len(r) else 0.0
            if value > limit and value >= before and value >= after:
                issues.append(MeshIssue(k + 1, None, f"vertices jump up to {value * 100:.1f} cm away from both "
                                                     f"neighbouring frames (threshold {limit * 100:.1f} cm)"))
        return issues


class VerifyReport(NamedTuple):
    frames: int
    issues: list[MeshIssue]
    spike_threshold_m: float


def verify_mesh_sequence(prefix: str | os.PathLike, n_vertices: int | None = None,
                         progress: Callable[[], None] | None = None) -> VerifyReport:
    """Check every frame of a triplet and its motion; never raises for damage it can name."""
    issues: list[MeshIssue] = []
    spikes = TemporalSpikes()
    with MeshNutReader(prefix, n_vertices=n_vertices, verify=False) as reader:
        rules = [follows_margin_rule(frame, reader.n_vertices) for frame in reader.raw_frames(0)]
        for index, frames in enumerate(reader.iter_raw()):
            bad = False
            for axis, frame in enumerate(frames):
                for reason in coordinate_frame_problems(frame, reader.n_vertices, rules[axis]):
                    issues.append(MeshIssue(index, axis, reason))
                    bad = True
            if not bad:
                try:
                    vertices = reader.decode_raw(frames, index)
                except InputError as exc:  # a header the checks above let through
                    issues.append(MeshIssue(index, None, str(exc)))
                    vertices = None
            spikes.add(None if bad else vertices)
            if progress:
                progress()
        n_frames = len(reader)
    issues += spikes.spikes()
    issues.sort(key=lambda issue: (issue.frame, -1 if issue.axis is None else issue.axis))
    return VerifyReport(n_frames, issues, spikes.threshold())
