"""The local Ray the graph starts: its workers (every actor of the graph) run at `ray.worker_niceness`;
objects up to `ray.max_inline_bytes` travel inline with the calls."""

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


def test_face_crop_sized_objects_go_inline_not_through_the_object_store(local_ray):
    import numpy as np

    from graphs.config import load_config

    @local_ray.remote(num_cpus=0)
    def crop(nbytes: int):
        return np.zeros(nbytes // 2, np.uint16)

    limit = load_config(None, {}).ray.max_inline_bytes
    # A 1-camera face crop is ~200 KB (over Ray's own 100 KiB): inline, so no node holds it.
    small, large = crop.remote(200_000), crop.remote(2 * limit)
    local_ray.wait([small, large], num_returns=2)
    locations = local_ray.experimental.get_object_locations([small, large])
    assert locations[small]["node_ids"] == []
    assert locations[large]["node_ids"], "an object over the limit is in the shared-memory store"
    assert local_ray.get(small).nbytes == 200_000
