"""The local Ray the graph starts: its workers (every actor of the graph) run at `ray.worker_niceness`."""

from __future__ import annotations

import os


def test_local_workers_run_at_the_configured_niceness(local_ray):
    from graphs.config import load_config

    @local_ray.remote(num_cpus=0)
    def niceness() -> int:
        return os.nice(0)

    # Ray's own default would add 15 to the niceness the raylet and the driver run at.
    assert load_config(None, {}).ray.worker_niceness == 0
    assert local_ray.get(niceness.remote()) == os.nice(0)
