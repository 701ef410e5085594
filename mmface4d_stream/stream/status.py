"""`StageMeter`: per-stage rate, latency and drop counts for the stream's ``status`` messages."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

import numpy as np

from mmface4d_stream.stream.schema import StageStatus


class StageMeter:
    """Sliding-window throughput of one pipeline stage.

    Call `record(latency_s)` for every item the stage finishes and `drop()` for every item it
    discards; `snapshot()` gives a `StageStatus` with the items per second and the median latency
    (milliseconds) over the last `window_s` seconds, and the drops since construction.

    Args:
        window_s: length of the averaging window in seconds.
        clock: monotonic time source in seconds (injectable for tests).
    """

    def __init__(self, window_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        if window_s <= 0:
            raise ValueError(f"window_s must be positive, got {window_s}")
        self.window_s = float(window_s)
        self._clock = clock
        self._started = clock()
        self._events: collections.deque[tuple[float, float]] = collections.deque()
        self.drops = 0
        self.items = 0

    def record(self, latency_s: float) -> None:
        """One item done; `latency_s` is its time in (or up to the end of) the stage, seconds."""
        now = self._clock()
        self._events.append((now, float(latency_s)))
        self.items += 1
        self._expire(now)

    def drop(self, n: int = 1) -> None:
        """`n` items discarded (stale frames, lost faces, full queues)."""
        self.drops += int(n)

    def _expire(self, now: float) -> None:
        while self._events and self._events[0][0] < now - self.window_s:
            self._events.popleft()

    def snapshot(self) -> StageStatus:
        """fps and median latency over the window (0 when idle), cumulative drops."""
        now = self._clock()
        self._expire(now)
        span = min(self.window_s, now - self._started)
        if not self._events or span <= 0:
            return StageStatus(fps=0.0, latency_ms=0.0, drops=self.drops)
        latencies = np.fromiter((lat for _, lat in self._events), dtype=np.float64, count=len(self._events))
        return StageStatus(
            fps=len(self._events) / span, latency_ms=float(np.median(latencies) * 1e3), drops=self.drops
        )
