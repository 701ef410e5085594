"""StageActor: what every per-sequence actor shares (`open`, `ping`, the faults config's test aid)."""

from __future__ import annotations

from actors.records import inject_fault


class StageActor:
    """Base of the graph's actors around one library stage.

    The constructor takes the arguments of `open` and calls it: a lane re-opens the same process
    (its imports and caches) for its next sequence with `open(...)`. `setup` makes what outlives
    a sequence (caches, loaded models) before the first `open`. `fault_stage` names the actor in the
    `faults` config; `open` sets `self.fault` (that config as a dict, or None) and the stage
    calls `inject_fault(seq, frame)` where a frame enters it.
    """

    fault_stage: str = ""

    def __init__(self, *args, **kwargs):
        self.fault: dict | None = None
        self.setup()
        self.open(*args, **kwargs)

    def setup(self) -> None:
        """Make what is kept from one sequence to the next (nothing here)."""

    def open(self, *args, **kwargs) -> bool:
        raise NotImplementedError

    def inject_fault(self, seq: str, frame: int) -> None:
        """The faults config's test aid at frame `frame` of `seq` (see `records.inject_fault`)."""
        inject_fault(self.fault, self.fault_stage, seq, frame)

    def ping(self) -> bool:
        return True
