"""StaleFrameGate: the live policy's check at a stage's entry (drop a frame that cannot make the budget)."""

from __future__ import annotations

from actors.records import Dropped, latency_ms_since


class StaleFrameGate:
    """Drops, at a stage's entry, a live frame whose latency would exceed `max_latency_ms`.

    The frame's age is host monotonic now minus its `t_source_ns` (the source's emit). With
    `expect_own_time` the stage's own recent time (a running mean, milliseconds, counted as at most
    half the budget so that fresh frames always pass and keep the estimate current) is added: a
    frame that would leave the stage over the budget is not worked on. max_latency_ms None:
    nothing is dropped (offline policy).
    """

    def __init__(self, stage: str, cause: str, max_latency_ms: float | None, expect_own_time: bool = False):
        self.stage, self.cause = stage, cause
        self.max_latency_ms = max_latency_ms
        self.expect_own_time = expect_own_time
        self.own_ms = 0.0
        self._seen = 0

    def check(self, seq: str, frame: int, t_source_ns: int) -> Dropped | None:
        """A `Dropped` marker for this frame when it is too late, else None."""
        if self.max_latency_ms is None or not t_source_ns:
            return None
        age = latency_ms_since(t_source_ns)
        expected = min(self.own_ms, self.max_latency_ms / 2) if self.expect_own_time else 0.0
        if age + expected <= self.max_latency_ms:
            return None
        detail = f"{age:.0f} ms old" + (f" + {expected:.0f} ms expected in {self.stage}" if expected else "")
        return Dropped(seq, frame, self.stage, detail, self.cause)

    def observe(self, ms: float) -> None:
        """The stage took `ms` on a frame: update its running mean (exponential, over ~10 frames)."""
        self._seen += 1
        self.own_ms = ms if self._seen == 1 else 0.9 * self.own_ms + 0.1 * ms
