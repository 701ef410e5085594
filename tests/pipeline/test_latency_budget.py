"""The live latency budget: percentiles per stage, waiting time, drops by cause, the stage over it; the steady rate."""

from __future__ import annotations

import pytest

from graphs.frame_graph import throughput_figures
from mmface4d_stream.pipeline.latency_budget import LatencyBudget, steady_rate


def test_budget_reports_stages_waiting_drops_and_the_stage_over_it():
    budget = LatencyBudget(max_latency_ms=100.0, frame_period_ms=1000 / 30)
    for i in range(20):
        # landmarks 20 ms, fit 50 ms (p95 from the slow frames), capture → publish 90 or 150 ms
        budget.record({"landmarks": 20.0, "landmarks.0": 20.0, "fit": 50.0 + (40.0 if i >= 18 else 0.0)},
                      150.0 if i >= 18 else 90.0, hurried=i % 5 == 0)
    budget.drop("source_busy", 3)
    budget.drop("too_old")
    budget.drop("fitter_busy", 0)
    report = budget.report()
    assert report["stages"]["landmarks"] == {"p50": 20.0, "p95": 20.0}
    assert report["stages"]["fit"]["p50"] == 50.0 and report["stages"]["fit"]["p95"] == 90.0
    # waiting: latency minus the whole stages (landmarks.0 is a part of landmarks, not added twice)
    assert report["stages"]["waiting"]["p50"] == 20.0
    assert report["capture_to_publish_ms"] == {"p50": 90.0, "p95": 150.0}
    assert report["drops"] == {"source_busy": 3, "too_old": 1, "fitter_busy": 0}
    assert report["hurried"] == 4  # frames the fitter fitted the fast way
    assert report["over"] == "fit"  # p95 150 > 100: the stage spending most of it
    assert report["behind"] == ["fit"]  # 50 ms p50 > one 33 ms frame period
    assert report["frames"] == 20


def test_budget_within_limits_names_no_stage_and_a_window_forgets_old_frames():
    now = [0.0]
    budget = LatencyBudget(max_latency_ms=300.0, window_s=2.0, clock=lambda: now[0])
    budget.record({"fit": 500.0}, 600.0, hurried=True)
    assert budget.report()["over"] == "fit" and budget.report()["hurried"] == 1
    now[0] = 5.0
    budget.record({"fit": 20.0}, 40.0)
    report = budget.report()
    assert report["frames"] == 1 and report["over"] is None and report["stages"]["fit"]["p95"] == 20.0
    assert report["hurried"] == 0  # the hurried frame left the window
    with pytest.raises(ValueError):
        LatencyBudget(max_latency_ms=0.0)


def test_steady_rate_is_right_after_a_late_start():
    # 30 fps capture for 10 s; frames 0-149 are lost to a late start and the first mesh (frame
    # 150, emitted at 5 s) takes 1 s; afterwards every other frame is fitted, 0.1 s after its
    # emit: 15 frames/s.
    period_ns = 1_000_000_000 // 30
    fitted = list(range(150, 300, 2))
    emit_ns = [f * period_ns for f in fitted]
    arrivals = [150 / 30 + 1.0] + [f / 30 + 0.1 for f in fitted[1:]]
    figures = throughput_figures(0.0, arrivals, emit_ns, clock_start=0.5)
    assert figures["steady_frames_per_second"] == pytest.approx(15.0, rel=1e-3)
    assert figures["first_frame_seconds"] == pytest.approx(6.0) and figures["first_mesh_after_clock_s"] == pytest.approx(5.5)
    # The arrival times alone give a rate inflated by the late first result (the 39 for 30).
    assert (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) > 18
    assert steady_rate([1]) is None and steady_rate([5, 5]) is None
