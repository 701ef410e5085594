"""The live policy's pieces as plain objects (no Ray): stale-frame gates, the fitter's warm-up and
join of per-camera parts, the publisher's drops by cause and its budget on the status topic."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from actors import Dropped, FitActor, MeshPacket
from actors.records import Checkpoint
from actors.latency_gate import StaleFrameGate
from actors.publish_actor import PublishActor
from mmface4d_stream.pipeline.stage_config import FitStageConfig
from mmface4d_stream.stream.schema import StatusMessage
from mmface4d_stream.stream.subscriber import MeshSubscriber
from mmface4d_stream.frame_records import MeshFrame, ObservedFrame


def _ago_ns(ms: float) -> int:
    return time.monotonic_ns() - int(ms * 1e6)


def test_gates_drop_late_frames_with_their_cause():
    landmarks = StaleFrameGate("landmarks", "too_old", 100.0)
    assert landmarks.check("s", 1, _ago_ns(20)) is None
    dropped = landmarks.check("s", 2, _ago_ns(150))
    assert isinstance(dropped, Dropped) and (dropped.frame, dropped.stage, dropped.cause) == (2, "landmarks", "too_old")
    fitter = StaleFrameGate("fitter", "fitter_busy", 100.0, expect_own_time=True)
    fitter.observe(40.0)
    # 70 ms old + 40 ms expected in the fitter: it would leave over the budget
    assert fitter.check("s", 3, _ago_ns(70)).cause == "fitter_busy"
    assert fitter.check("s", 4, _ago_ns(30)) is None
    fitter.observe(500.0)  # one slow frame: the expectation is capped at half the budget, fresh frames pass
    assert fitter.check("s", 5, _ago_ns(20)) is None
    assert StaleFrameGate("fitter", "fitter_busy", None).check("s", 6, _ago_ns(10_000)) is None  # offline


def test_fitter_warms_on_a_preroll_and_joins_per_camera_parts(one_camera_observed):
    options = FitStageConfig(face_model="template", device="cpu", torch_threads=1)
    first = one_camera_observed[0]
    fitter = FitActor(None, options)
    warm = fitter.warm_up(first)
    assert warm["lost"] is False and warm["seconds"] > 0
    assert fitter.summary()["frames"] == 0  # the pre-roll is not a frame of the sequence
    assert fitter.stage.faces is not None  # the template was built from the pre-roll
    # A one-camera frame as one part, and a two-part frame of which one part carries no crop.
    packet = fitter.fit(one_camera_observed[1])
    assert isinstance(packet, MeshPacket) and not packet.mesh.lost and fitter.summary()["frames"] == 1
    empty = ObservedFrame(first.seq, 2, 0, [None])
    joined = fitter.fit(one_camera_observed[2], empty)
    assert isinstance(joined, MeshPacket) and joined.mesh.frame == 2
    marker = Dropped(first.seq, 3, "landmarks", "old")
    assert fitter.fit(one_camera_observed[3], marker) is marker  # one camera dropped it: the frame is dropped


def test_the_fitter_hurries_frames_that_arrive_late(one_camera_observed):
    options = FitStageConfig(face_model="template", device="cpu", torch_threads=1)
    fitter = FitActor(None, options, max_latency_ms=10_000.0, hurry_after_ms=50.0)
    fitter.warm_up(one_camera_observed[0])
    fresh = fitter.fit(dataclasses.replace(one_camera_observed[1], t_source_ns=_ago_ns(5)))
    late = [fitter.fit(dataclasses.replace(obs, t_source_ns=_ago_ns(80))) for obs in one_camera_observed[2:5]]
    assert "hurried" not in fresh.mesh.flags
    # never two in a row: the offsets still follow the face every other frame
    assert ["hurried" in p.mesh.flags for p in late] == [True, False, True]
    assert fitter.summary()["frames_hurried"] == 2
    offline = FitActor(None, options)  # no hurry_after_ms: never, however old
    offline.warm_up(one_camera_observed[0])
    assert "hurried" not in offline.fit(dataclasses.replace(one_camera_observed[2], t_source_ns=_ago_ns(10_000))).mesh.flags


def _packet(frame: int, faces=None) -> MeshPacket:
    vertices = np.random.default_rng(frame).normal(size=(6, 3)).astype(np.float32)
    return MeshPacket(MeshFrame("s", frame, frame * 33_333_333, vertices, False, t_source_ns=_ago_ns(40),
                                timings_ms={"landmarks": 10.0, "fit": 20.0}), faces)


def test_publisher_counts_drops_by_cause_and_publishes_the_budget():
    publisher = PublishActor("tcp://127.0.0.1:*", drop_when_full=True)
    try:
        publisher.set_budget(max_latency_ms=300.0, fps=30.0)
        with MeshSubscriber(publisher.endpoint, timeout_s=2.0, topics=("status",)) as subscriber:
            time.sleep(0.3)  # the subscription reaches the XPUB socket
            publisher.announce("ready")
            ready = subscriber.recv()
            assert isinstance(ready, StatusMessage) and ready.state == "ready"
            assert ready.budget["max_latency_ms"] == 300.0 and ready.budget["frames"] == 0
            faces = np.array([[0, 1, 2], [3, 4, 5]], np.int32)
            time.sleep(1.05)  # status goes out at 1 Hz: the first mesh's comes after the forced "ready"
            latency = publisher.publish(_packet(0, faces))
            assert 40.0 <= latency < 1000.0
            assert publisher.publish(Dropped("s", 2, "landmarks", "old", "too_old")) is None  # frame 1: source busy
            publisher.publish(Dropped("s", 3, "fitter", "busy", "fitter_busy"))
            publisher.publish(_packet(6))  # frames 4 and 5 never reached the graph
            report = publisher.sink.budget.report()
            assert report["drops"] == {"source_busy": 3, "too_old": 1, "fitter_busy": 1}
            assert report["frames"] == 2 and report["stages"]["fit"] == {"p50": 20.0, "p95": 20.0}
            assert publisher.sink._meters["graph"].drops == 5  # each dropped frame counted once
            running = subscriber.recv()  # the first mesh's status (1 Hz: later ones wait)
            assert isinstance(running, StatusMessage) and running.state == "running"
            assert running.budget["capture_to_publish_ms"]["p50"] >= 40.0 and running.budget["frames"] == 1
    finally:
        publisher.close()


def test_checkpoints_carry_the_template_once_and_the_driver_carries_it_over(one_camera_observed):
    """The template (~1.7 MB, fixed once built) rides in a stream's first checkpoint only; the
    driver's `carry_model` puts it back into the later ones, from which a new fitter resumes exactly."""
    options = FitStageConfig(face_model="template", device="cpu", torch_threads=1)
    fitter = FitActor(None, options, checkpoint_every=1)
    first, second = (fitter.fit(obs).checkpoint for obs in one_camera_observed[:2])
    assert first.model is not None and second.model is None and second.fitter["fitter"]["built_model"]
    kept = second.carry_model(first)
    assert kept.model is first.model and kept.frame == second.frame
    assert second.carry_model(Checkpoint()) is second  # nothing earlier to carry
    expected = fitter.fit(one_camera_observed[2]).mesh.vertices
    resumed = FitActor(None, options, checkpoint_every=1)
    resumed.restore(kept.fitter)
    np.testing.assert_allclose(resumed.fit(one_camera_observed[2]).mesh.vertices, expected, atol=1e-6)


def test_a_state_without_its_template_is_refused_by_a_fresh_fitter(one_camera_observed):
    """Restoring a later checkpoint as is (template left out) would rebuild another template from
    the next frame under the old warm start: it is an error, not a silent mismatch."""
    options = FitStageConfig(face_model="template", device="cpu", torch_threads=1)
    fitter = FitActor(None, options, checkpoint_every=1)
    _, second = (fitter.fit(obs).checkpoint for obs in one_camera_observed[:2])
    with pytest.raises(ValueError, match="carry_model"):
        FitActor(None, options).restore(second.fitter)
