"""Two sequences on a 2-node local Ray cluster (`ray.cluster_utils.Cluster`)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_two_node_cluster_processes_two_sequences(graph_capture, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    from graphs.config import load_config
    from graphs.frame_graph import SequenceJob
    from graphs.runner import run_jobs, worker_runtime_env

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=2)
    try:
        ray.init(address=cluster.address, runtime_env=worker_runtime_env())
        config = load_config("offline-cluster", {"source.cameras": [1], "source.max_frames": 6})
        jobs = [SequenceJob([str(graph_capture.sequence_prefix)], str(tmp_path / name), name) for name in ("a", "b")]
        results = run_jobs(jobs, config, progress=False)
        assert all(r is not None and r.ok for r in results), [r.error for r in results if r]
        for name in ("a", "b"):
            meta = json.loads((tmp_path / f"{name}_meta.json").read_text())
            assert meta["frames_written"] == 6
        assert len({n["NodeID"] for n in ray.nodes() if n["Alive"]}) == 2
    finally:
        ray.shutdown()
        cluster.shutdown()
