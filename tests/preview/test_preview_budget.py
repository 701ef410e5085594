"""The live latency budget and the graph's state reach the preview's status (what the page shows)."""

from __future__ import annotations

import math

import pytest

from mmface4d_stream.preview.relay import StreamRelay
from mmface4d_stream.stream.schema import StageStatus
from preview_helpers import bind_retrying, wait_until

pytestmark = pytest.mark.timeout(60)


def test_budget_and_ready_state_reach_the_relay(stream_url):
    publisher = bind_retrying(stream_url)
    relay = StreamRelay(stream_url)
    try:
        wait_until(lambda: publisher.poll_subscriptions() is not None and publisher.stats.subscriptions > 0,
                   what="the relay to subscribe")
        publisher.publish_status({}, force=True, state="ready")
        wait_until(lambda: relay.info()["graph_state"] == "ready", what="the ready state")
        assert relay.info()["budget"] is None
        budget = {"max_latency_ms": 300.0, "capture_to_publish_ms": {"p50": 250.0, "p95": 420.0},
                  "stages": {"fit": {"p50": 120.0, "p95": 260.0}, "landmarks": {"p50": 30.0, "p95": 45.0}},
                  "drops": {"source_busy": 12, "too_old": 0, "fitter_busy": 3}, "over": "fit", "behind": ["fit"],
                  "frames": 40, "odd": math.inf}
        publisher.publish_status({"fit": StageStatus(8.0, 120.0, 3)}, force=True, state="running", budget=budget)
        wait_until(lambda: relay.info()["graph_state"] == "running", what="the running state")
        info = relay.info()
    finally:
        relay.close()
        publisher.close()
    assert info["budget"]["over"] == "fit" and info["budget"]["stages"]["fit"] == {"p50": 120.0, "p95": 260.0}
    assert info["budget"]["drops"]["fitter_busy"] == 3 and info["budget"]["capture_to_publish_ms"]["p95"] == 420.0
    assert info["budget"]["odd"] is None  # JSON has no infinity: the page gets null
    assert info["stages"]["fit"]["drops"] == 3
