"""Group the recordings of one multi-Kinect session into frame sets by device timestamp.

Wired-synchronized Kinects share a device clock: a subordinate's captures carry device
timestamps `subordinate_delay_usec` (K4A_SUBORDINATE_DELAY_NS) after the master's matching
ones. `SessionSync` streams the recordings side by side (one decoded capture per recording in
memory at a time), aligns them by `timestamp - subordinate delay` and groups captures whose
aligned timestamps lie within a tolerance (half a frame period by default, as the SDK groups
a device's own images). Frames outside the span all recordings cover are skipped; frames a
camera dropped leave a gap in that camera's slot. Everything is counted in a `SyncReport`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

from mmface4d_stream.errors import InputError
from mmface4d_stream.k4a.mkv import K4aCapture
from mmface4d_stream.k4a.mkv_reader import MkvReader

log = logging.getLogger(__name__)


class RecordingSpan(NamedTuple):
    """First/last capture device timestamps (µs) of a recording and its capture count."""

    first_usec: int
    last_usec: int
    captures: int


class FrameSet(NamedTuple):
    """Captures of all cameras taken at one instant.

    `captures[i]` belongs to the i-th recording given to `SessionSync` (None: that camera
    dropped this frame). `timestamp_usec` is the aligned device timestamp of the earliest
    member (the master's clock); `index` counts frame sets from 0.
    """

    index: int
    timestamp_usec: int
    captures: tuple[K4aCapture | None, ...]

    @property
    def complete(self) -> bool:
        return all(c is not None for c in self.captures)


@dataclass
class SyncReport:
    """Counts per recording (lists are in input order).

    frame_sets: frame sets produced; complete: those with every camera.
    missing[i]: frame sets in which camera i had no capture (dropped frames).
    outside[i]: captures of camera i before/after the span all recordings cover.
    discarded[i]: captures of camera i in incomplete sets, not output (require_all=True).
    """

    paths: list[str]
    frame_sets: int = 0
    complete: int = 0
    missing: list[int] = field(default_factory=list)
    outside: list[int] = field(default_factory=list)
    discarded: list[int] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.frame_sets} frame sets ({self.complete} complete)"]
        for path, miss, out, disc in zip(self.paths, self.missing, self.outside, self.discarded):
            parts.append(f"{Path(path).name}: {miss} dropped, {out} outside overlap, {disc} discarded")
        return "; ".join(parts)


def recording_span(reader: MkvReader) -> RecordingSpan:
    """Span of a recording's captures, from block headers only (no decoding)."""
    first = last = None
    count = 0
    for stamps in reader.scan_timestamps():
        ts = stamps.get("DEPTH", stamps.get("IR"))
        if ts is None:
            ts = stamps["COLOR"] + reader.depth_delay_usec
        first = ts if first is None else first
        last = ts
        count += 1
    if first is None:
        raise InputError("recording holds no captures", path=reader.path)
    return RecordingSpan(first, last, count)


def check_same_session(readers: Sequence[MkvReader]) -> None:
    """InputError unless the recordings can come from one synchronized session.

    Checks: distinct devices (serial numbers), one frame rate, and either a single recording,
    all STANDALONE, or exactly one MASTER with the rest SUBORDINATE.
    """
    serials = [r.serial_number for r in readers if r.serial_number]
    dupes = sorted({s for s in serials if serials.count(s) > 1})
    if dupes:
        paths = [str(r.path) for r in readers if r.serial_number in dupes]
        raise InputError(
            f"recordings {', '.join(paths)} come from the same device {dupes[0]}: not one session of "
            "different cameras", path=paths[0],
        )
    rates = {r.fps for r in readers}
    if len(rates) > 1:
        raise InputError(
            "recordings of different sessions: frame rates differ ("
            + ", ".join(f"{r.path.name} {r.fps} fps" for r in readers) + ")", path=readers[0].path,
        )
    modes = [r.wired_sync_mode for r in readers]
    if len(readers) > 1 and any(m != "STANDALONE" for m in modes):
        masters = [r for r in readers if r.wired_sync_mode == "MASTER"]
        if len(masters) != 1 or any(m == "STANDALONE" for m in modes):
            raise InputError(
                "recordings of different sessions: a synchronized session has one MASTER and "
                "SUBORDINATE devices, got " + ", ".join(f"{r.path.name} {r.wired_sync_mode}" for r in readers),
                path=readers[0].path,
            )


class SessionSync:
    """Frame sets from the MKVs of one session (streaming). Use as a context manager.

    `paths`: the recordings (any order; the master need not be first). `tolerance_usec`:
    largest aligned-timestamp difference inside a frame set (default: half a frame period).
    `require_all`: yield only complete frame sets (incomplete ones are counted, not yielded).
    `tracks`: which of COLOR/DEPTH/IR to decode (default all).
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        *,
        tolerance_usec: int | None = None,
        require_all: bool = False,
        tracks: Sequence[str] | None = None,
    ):
        if not paths:
            raise ValueError("SessionSync needs at least one recording.")
        resolved = [Path(p).resolve() for p in paths]
        if len(set(resolved)) != len(resolved):
            raise InputError("the same recording is given twice", path=paths[0])
        self.readers: list[MkvReader] = []
        try:
            for path in paths:
                self.readers.append(MkvReader(path, tracks=tracks))
            check_same_session(self.readers)
            self.spans = [recording_span(r) for r in self.readers]
        except BaseException:
            self.close()
            raise
        fps = self.readers[0].fps
        self.period_usec = 1_000_000 // fps
        self.tolerance_usec = self.period_usec // 2 if tolerance_usec is None else int(tolerance_usec)
        if not 0 <= self.tolerance_usec < self.period_usec:
            raise ValueError(f"tolerance_usec must be in [0, {self.period_usec}), got {self.tolerance_usec}.")
        self.require_all = require_all
        self.offsets_usec = [r.subordinate_delay_usec for r in self.readers]
        starts = [s.first_usec - o for s, o in zip(self.spans, self.offsets_usec)]
        ends = [s.last_usec - o for s, o in zip(self.spans, self.offsets_usec)]
        self.start_usec, self.end_usec = max(starts), min(ends)
        if self.start_usec > self.end_usec + self.tolerance_usec:
            detail = ", ".join(
                f"{r.path.name} {a}..{b} µs" for r, a, b in zip(self.readers, starts, ends)
            )
            raise InputError(
                f"recordings have no overlapping device timestamps ({detail}): not one session",
                path=self.readers[0].path,
            )
        n = len(self.readers)
        self.report = SyncReport([str(r.path) for r in self.readers], missing=[0] * n, outside=[0] * n,
                                 discarded=[0] * n)
        master = [i for i, r in enumerate(self.readers) if r.wired_sync_mode == "MASTER"]
        self.reference = master[0] if master else 0

    @property
    def frame_count_estimate(self) -> int:
        """Frame sets expected in the common span (from timestamps, before decoding)."""
        return max(0, round((self.end_usec - self.start_usec) / self.period_usec) + 1)

    def _aligned(self, i: int, capture: K4aCapture) -> int:
        return capture.timestamp_usec - self.offsets_usec[i]

    def __iter__(self) -> Iterator[FrameSet]:
        n = len(self.readers)
        iters = [iter(r) for r in self.readers]
        heads: list[K4aCapture | None] = [None] * n
        done = [False] * n
        lo = self.start_usec - self.tolerance_usec
        hi = self.end_usec + self.tolerance_usec

        def advance(i: int) -> None:
            while True:
                capture = next(iters[i], None)
                if capture is None:
                    heads[i], done[i] = None, True
                    return
                ts = self._aligned(i, capture)
                if lo <= ts <= hi:
                    heads[i] = capture
                    return
                self.report.outside[i] += 1
                if ts > hi:
                    # Past the common span: count the rest from timestamps without decoding.
                    heads[i], done[i] = None, True
                    self.report.outside[i] += sum(1 for _ in self._remaining_after(i, ts))
                    return

        for i in range(n):
            advance(i)
        index = 0
        while any(h is not None for h in heads):
            t0 = min(self._aligned(i, h) for i, h in enumerate(heads) if h is not None)
            members: list[K4aCapture | None] = [None] * n
            for i, h in enumerate(heads):
                if h is not None and self._aligned(i, h) - t0 <= self.tolerance_usec:
                    members[i] = h
            for i in range(n):
                if members[i] is not None:
                    advance(i)
                else:
                    self.report.missing[i] += 1
            complete = all(m is not None for m in members)
            if complete:
                self.report.complete += 1
            elif self.require_all:
                for i, m in enumerate(members):
                    if m is not None:
                        self.report.discarded[i] += 1
                continue
            self.report.frame_sets += 1
            yield FrameSet(index, t0, tuple(members))
            index += 1
        if any(self.report.missing) or any(self.report.outside):
            log.info("sync: %s", self.report.summary())

    def _remaining_after(self, i: int, ts: int) -> Iterator[dict[str, int]]:
        reader = self.readers[i]
        for stamps in reader.scan_timestamps():
            first = stamps.get("DEPTH", stamps.get("IR"))
            if first is None:
                first = stamps["COLOR"] + reader.depth_delay_usec
            if first - self.offsets_usec[i] > ts:
                yield stamps

    def close(self) -> None:
        for reader in self.readers:
            reader.close()

    def __enter__(self) -> SessionSync:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
