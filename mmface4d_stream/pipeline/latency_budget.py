"""The live path's latency budget: per-stage and capture → publish percentiles, drops by cause.

`LatencyBudget` collects, per frame that reached the end of the graph, its stage timings and its
capture → publish latency, and per dropped frame its cause; `report()` says where the budget goes:

- `stages`: p50/p95 milliseconds of each stage (the time a frame spends in it; `landmarks.1` is a
  part of `landmarks`: camera 1 of cameras that run in parallel), `waiting` the rest of capture →
  publish (queues, transport: end-to-end minus the stages' sum);
- `capture_to_publish_ms`: p50/p95 from the source's emit to the end of the graph;
- `drops`: frames dropped by cause (`DROP_CAUSES`); `hurried`: frames the fitter fitted the fast way
  because they reached it late (`policy.hurry_after_ms`);
- `over`: when capture → publish p95 exceeds `max_latency_ms`, the stage with the largest p95 (the
  one spending most of the budget), else None; `behind`: the stages whose p50 exceeds the frame
  period (they cannot keep the capture rate, so frames are dropped before them).

A window (`window_s`) keeps the last seconds only (the 1 Hz status of a running graph); without
one every frame counts (the meta json of a whole run). No Ray here.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Mapping

import numpy as np

# Why a live frame set was not fitted: the graph was busy when the source had it (it was replaced
# by a newer one), it was older than the budget when it reached the landmark stage, or it would
# have been over the budget after waiting for the fitter.
DROP_CAUSES = ("source_busy", "too_old", "fitter_busy")


def latency_stats(values, digits: int | None = 2) -> dict[str, float]:
    """{"p50", "p95", "mean", "n"} of `values` (e.g. milliseconds, in their unit), rounded to
    `digits` decimals (None: unrounded); {} when there are none. The one percentile summary of the
    project: meta json (`stage_latency_ms`), live budget, stream reports."""
    a = np.asarray(list(values), dtype=np.float64)
    if a.size == 0:
        return {}
    p50, p95 = np.percentile(a, [50, 95])
    figures = {"p50": float(p50), "p95": float(p95), "mean": float(a.mean())}
    if digits is not None:
        figures = {k: round(v, digits) for k, v in figures.items()}
    return dict(figures, n=int(a.size))


def p50_p95(values) -> dict[str, float] | None:
    """{"p50", "p95"} of `values` in their unit, rounded to 0.1; None when there are none."""
    stats = latency_stats(values, 1)
    return {"p50": stats["p50"], "p95": stats["p95"]} if stats else None


class LatencyBudget:
    """Where the latency of a live graph goes, against a budget.

    max_latency_ms: the capture → publish budget (`policy.max_latency_ms`). frame_period_ms: the
    capture's frame period (33.3 ms at 30 fps). window_s: keep only the last seconds (None: all).
    clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, max_latency_ms: float, frame_period_ms: float = 1000.0 / 30, window_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if max_latency_ms <= 0:
            raise ValueError(f"max_latency_ms must be positive, got {max_latency_ms}")
        self.max_latency_ms = float(max_latency_ms)
        self.frame_period_ms = float(frame_period_ms)
        self.window_s = window_s
        self._clock = clock
        self._frames: collections.deque[tuple[float, dict[str, float], float | None, bool]] = collections.deque()
        self.drops: dict[str, int] = dict.fromkeys(DROP_CAUSES, 0)
        self.frames = 0

    def record(self, timings_ms: Mapping[str, float], capture_to_publish_ms: float | None, hurried: bool = False) -> None:
        """One frame reached the end of the graph: its per-stage milliseconds, its latency (None:
        unknown) and whether the fitter hurried it."""
        now = self._clock()
        self._frames.append((now, dict(timings_ms), capture_to_publish_ms, bool(hurried)))
        self.frames += 1
        self._expire(now)

    def drop(self, cause: str, n: int = 1) -> None:
        """`n` frames dropped for `cause` (one of `DROP_CAUSES`; another word is counted under its own name)."""
        if n > 0:
            self.drops[cause] = self.drops.get(cause, 0) + int(n)

    def _expire(self, now: float) -> None:
        if self.window_s is None:
            return
        while self._frames and self._frames[0][0] < now - self.window_s:
            self._frames.popleft()

    def report(self) -> dict:
        """The budget's state (see the module docstring): plain types, ready for JSON and the wire."""
        self._expire(self._clock())
        per_stage: dict[str, list[float]] = collections.defaultdict(list)
        latencies = []
        for _, timings, latency, _ in self._frames:
            for stage, ms in timings.items():
                per_stage[stage].append(ms)
            if latency is not None:
                latencies.append(latency)
                spent = sum(ms for stage, ms in timings.items() if "." not in stage)
                per_stage["waiting"].append(max(0.0, latency - spent))
        stages = {stage: p50_p95(values) for stage, values in sorted(per_stage.items())}
        end_to_end = p50_p95(latencies)
        whole = {k: v for k, v in stages.items() if "." not in k}  # `landmarks.0`: a part of `landmarks`
        working = {k: v for k, v in whole.items() if k != "waiting"}
        over = None
        if end_to_end is not None and end_to_end["p95"] > self.max_latency_ms and whole:
            over = max(whole, key=lambda k: whole[k]["p95"])
        return {
            "max_latency_ms": self.max_latency_ms,
            "capture_to_publish_ms": end_to_end,
            "stages": stages,
            "drops": dict(self.drops),
            "hurried": sum(hurried for *_, hurried in self._frames),
            "over": over,
            "behind": sorted(k for k, v in working.items() if v["p50"] > self.frame_period_ms),
            "frames": len(self._frames),
        }


def steady_rate(emit_ns: list[int]) -> float | None:
    """Frames per second of capture time from the first fitted frame to the last.

    emit_ns: the source's emit time (host monotonic ns) of every fitted frame, in any order. A late
    first mesh does not shorten the span (the time is the frames' own, not their arrival's), so a
    run whose first seconds were lost still gives the rate the graph kept afterwards.
    """
    if len(emit_ns) < 2:
        return None
    span_s = (max(emit_ns) - min(emit_ns)) / 1e9
    return (len(emit_ns) - 1) / span_s if span_s > 0 else None
