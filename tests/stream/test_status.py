"""StageMeter: windowed fps, median latency and cumulative drops."""

from __future__ import annotations

import pytest

from mmface4d_stream.stream.schema import StageStatus
from mmface4d_stream.stream.status import StageMeter


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_stage_meter_reports_rate_latency_and_drops_over_its_window():
    clock = FakeClock()
    meter = StageMeter(window_s=1.0, clock=clock)
    assert meter.snapshot() == StageStatus(0.0, 0.0, 0)
    for i in range(60):  # 2 s at 30 fps, latency 20 ms then 40 ms
        clock.now += 1 / 30
        meter.record(0.020 if i < 30 else 0.040)
    meter.drop(3)
    status = meter.snapshot()
    assert status.fps == pytest.approx(30.0, abs=1.0)
    assert status.latency_ms == pytest.approx(40.0)
    assert status.drops == 3 and meter.items == 60
    clock.now += 5.0  # idle
    assert meter.snapshot() == StageStatus(0.0, 0.0, 3)


def test_stage_meter_rate_is_right_before_a_full_window_has_passed():
    clock = FakeClock()
    meter = StageMeter(window_s=2.0, clock=clock)
    for _ in range(15):
        clock.now += 1 / 30
        meter.record(0.01)
    assert meter.snapshot().fps == pytest.approx(30.0)
    with pytest.raises(ValueError, match="window_s"):
        StageMeter(window_s=0)
