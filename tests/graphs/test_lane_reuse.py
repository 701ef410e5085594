"""Sequences run one after another in a lane reuse its actor processes, with identical results."""

from __future__ import annotations

import json

import numpy as np

from graphs.config import load_config
from graphs.frame_graph import Lane, SequenceJob, SequencePipeline
from mmface4d_stream.formats.mesh_nut import MeshNutReader


def _actor_ids(lane: Lane) -> dict[str, str]:
    return {key: actor._actor_id.hex() for key, actor in lane.actors.items()}


def test_a_lane_serves_sequences_one_after_another_with_the_same_processes(graph_capture, tmp_path, local_ray):
    config = load_config(None, {"source.cameras": [1], "source.max_frames": 6, "smoother.enabled": True})
    prefix = str(graph_capture.sequence_prefix)
    lane = Lane()
    try:
        first = SequencePipeline(SequenceJob([prefix], str(tmp_path / "a"), "a"), config, progress=False,
                                 lane=lane).run()
        assert first.ok, first.error
        kept = _actor_ids(lane)
        assert set(kept) == {"source", "landmarks", "fitter", "smoother", "encoder"}
        second = SequencePipeline(SequenceJob([prefix], str(tmp_path / "b"), "b"), config, progress=False,
                                  lane=lane).run()
        assert second.ok, second.error
        assert _actor_ids(lane) == kept and lane.sequences == 2
    finally:
        lane.discard()
    assert lane.actors == {}
    # The second sequence starts from scratch (fresh fitter, smoother and trackers): same meshes.
    with MeshNutReader(tmp_path / "a") as a, MeshNutReader(tmp_path / "b") as b:
        assert len(a) == len(b) == 6
        for i in range(6):
            np.testing.assert_allclose(a[i], b[i], atol=2e-5)
    for name in ("a", "b"):
        meta = json.loads((tmp_path / f"{name}_meta.json").read_text())
        assert meta["frames_written"] == 6 and meta["source"] == [prefix]
        assert meta["first_frame_seconds"] > 0 and meta["steady_frames_per_second"] > 0


def test_a_failed_sequence_leaves_no_actor_in_its_lane(graph_capture, tmp_path, local_ray):
    config = load_config(None, {"source.cameras": [1], "source.max_frames": 4,
                                "faults.stage": "fitter", "faults.frame": 2, "faults.kind": "raise"})
    lane = Lane()
    result = SequencePipeline(SequenceJob([str(graph_capture.sequence_prefix)], str(tmp_path / "f"), "f"), config,
                              progress=False, lane=lane).run()
    assert not result.ok and "fitter" in result.error
    assert lane.actors == {}
