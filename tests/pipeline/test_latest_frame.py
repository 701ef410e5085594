"""The live policy's frame holder: newest only, or a frame period of slack (`source.live_keep`)."""

from __future__ import annotations

import threading

import pytest

from mmface4d_stream.frame_records import FrameSet
from mmface4d_stream.pipeline.latest_frame import LatestFrameSource


def _frames(n: int, released: threading.Event):
    """Frame sets 0..n-1 delivered at once, then the source waits for `released` before it ends."""
    for k in range(n):
        yield FrameSet("s", k, k * 33_333_333, [], t_source_ns=1)
    released.wait(5.0)


def _held_after(n: int, keep: int) -> tuple[list[int], LatestFrameSource]:
    released = threading.Event()
    source = LatestFrameSource(_frames(n, released), pace=False, keep=keep)
    try:
        for _ in range(200):  # the reader thread has delivered all n
            if source.read == n:
                break
            threading.Event().wait(0.01)
        assert source.read == n
        released.set()
        taken = []
        while (frame_set := source.next(timeout_s=5.0)) is not None:
            taken.append(frame_set.frame)
        return taken, source
    finally:
        source.close()


@pytest.mark.parametrize("keep, expected", [(1, [4]), (2, [3, 4]), (3, [2, 3, 4])])
def test_a_late_consumer_gets_the_newest_frames_held_oldest_first(keep, expected):
    taken, source = _held_after(5, keep)
    assert taken == expected
    assert source.dropped == 5 - keep


def test_keep_must_hold_a_frame():
    with pytest.raises(ValueError, match="keep must be at least 1"):
        LatestFrameSource(iter(()), pace=False, keep=0)
