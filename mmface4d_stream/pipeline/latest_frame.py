"""The live policy: a thread reads frame sets ahead and only the newest (or the newest few) are kept.

A consumer that falls behind gets fresh frames and the skipped ones are counted, so latency stays
bounded. Recordings are paced at device rate, as a camera would deliver them.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable

from mmface4d_stream.frame_records import FrameSet


class LatestFrameSource:
    """The live policy over any frame-set iterable: a thread reads ahead, only the newest frame is kept.

    pace: sleep so frame sets leave at the rate their capture times say (replaying recordings as a
    camera would deliver them); off for real devices, which block until the next capture.
    keep: frame sets held for the consumer: 1, only the newest; 2 or more, also the ones before it
    (a consumer late by less than keep - 1 frame periods loses nothing, at the price of that much
    latency for the frames it then takes; it catches up if it is faster than the camera on average).
    `next()` returns the oldest frame set held (waiting for one), None once the source is
    exhausted. Frames pushed out before anyone took them are counted in `dropped`. `on_frame` sees
    every frame set in the reading thread (the recorder writes all of them, dropped or not).
    """

    def __init__(self, frames, pace: bool = True, on_frame: Callable[[FrameSet], None] | None = None,
                 keep: int = 1):
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self._frames = frames
        self.pace = pace
        self.on_frame = on_frame
        self.dropped = 0
        self.read = 0
        self.error: BaseException | None = None
        self._held: collections.deque[FrameSet] = collections.deque()
        self.keep = int(keep)
        self._finished = False
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="latest-frame-source", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        start_host = start_capture = None
        try:
            for frame_set in self._frames:
                if self._stop.is_set():
                    break
                if self.pace:
                    if start_host is None:
                        start_host, start_capture = time.monotonic_ns(), frame_set.t_capture_ns
                    wait_ns = (frame_set.t_capture_ns - start_capture) - (time.monotonic_ns() - start_host)
                    if wait_ns > 0 and self._stop.wait(wait_ns / 1e9):
                        break
                if self.pace or not frame_set.t_source_ns:
                    # A device source stamps its host capture time itself (the audio's reference).
                    frame_set.t_source_ns = time.monotonic_ns()
                if self.on_frame is not None:
                    self.on_frame(frame_set)
                with self._cond:
                    if len(self._held) == self.keep:
                        self._held.popleft()
                        self.dropped += 1
                    self._held.append(frame_set)
                    self.read += 1
                    self._cond.notify_all()
        except BaseException as exc:  # handed to the consumer: a source failure must not look like an end
            self.error = exc
        finally:
            with self._cond:
                self._finished = True
                self._cond.notify_all()

    def next(self, timeout_s: float | None = None) -> FrameSet | None:
        """The oldest frame set held (waiting up to `timeout_s`; None: forever); None when the source ended."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while not self._held and not self._finished:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"no frame within {timeout_s} s")
                self._cond.wait(remaining)
            frame_set = self._held.popleft() if self._held else None
        if frame_set is None and self.error is not None:
            raise self.error
        return frame_set

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
