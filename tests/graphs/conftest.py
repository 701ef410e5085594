"""Shared fixtures of the graph tests: one short synthetic capture and one local Ray per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def graph_capture(tmp_path_factory):
    """12 frames of 3 synthetic Kinects (dataset files, MKVs, ground truth)."""
    from mmface4d_stream.render.synth import synthesize_capture

    return synthesize_capture(tmp_path_factory.mktemp("graph_capture"), frames=12, cameras=3, seed=5, name="cap",
                              write_mkv=True, progress=False)


@pytest.fixture
def local_ray():
    """A local 2-CPU Ray (started once, shared by the tests that need it)."""
    import ray

    from graphs.config import load_config
    from graphs.runner import ensure_ray

    if ray.is_initialized() and len(ray.nodes()) > 1:
        ray.shutdown()
    ensure_ray(load_config(None, {"ray.num_cpus": 2}))
    yield ray
