"""Run many sequences: one pipeline per sequence, as many at once as the Ray cluster's CPUs allow.

`ensure_ray(config)` starts a local Ray (or joins `ray.address`); `run_jobs(jobs, config)` runs
every job whose outputs are not finished yet (`pipeline.sinks.is_finished`: re-runs resume).
Each concurrent pipeline has a `Lane`: its actor processes serve one sequence after another.
With `fitter.shared` (`shared_fitter_plan`) the lanes' pipelines fit in shared fitter actors, one
per GPU, started here for the whole run.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import ray

from graphs.config import GraphConfig
from graphs.frame_graph import SequencePipeline, SequenceResult
from graphs.sequence_graph import Lane, SequenceJob, SharedFitterPool, shared_fitter_plan
from mmface4d_stream.errors import InputError
from mmface4d_stream.pipeline.sinks import is_finished

log = logging.getLogger(__name__)


def worker_runtime_env() -> dict:
    """Ray runtime env that makes the project's `actors/` and `graphs/` importable by the workers."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}}


def ensure_ray(config: GraphConfig) -> dict:
    """Connect to `config.ray.address` or start a local Ray (no dashboard, workers at
    `ray.worker_niceness`, objects up to `ray.max_inline_bytes` passed inline); returns cluster
    resources."""
    if not ray.is_initialized():
        runtime_env = worker_runtime_env()
        if config.ray.address:
            try:
                ray.init(address=config.ray.address, runtime_env=runtime_env, logging_level=logging.WARNING,
                         log_to_driver=False)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise InputError(f"cannot join the Ray cluster at {config.ray.address}: {exc}") from None
        else:
            ray.init(num_cpus=config.ray.num_cpus, include_dashboard=False, runtime_env=runtime_env,
                     logging_level=logging.WARNING, log_to_driver=False,
                     _system_config={"worker_niceness": config.ray.worker_niceness,
                                     "max_direct_call_object_size": config.ray.max_inline_bytes})
    return ray.cluster_resources()


def pipelines_at_once(config: GraphConfig, resources: dict, publishing: bool, shared_fitters: int = 0) -> int:
    """How many sequences run concurrently: the configured number, or the cluster's CPUs divided by
    one pipeline's reservation (without its fitter's when `shared_fitters` actors, reserving theirs
    once, fit for every lane). Publishing serializes sequences (one stream endpoint)."""
    if publishing:
        return 1
    if config.ray.max_pipelines:
        return config.ray.max_pipelines
    per_pipeline = config.landmarks.num_cpus + (0.0 if shared_fitters else config.fitter.num_cpus)
    if per_pipeline <= 0:
        return 1
    cpus = resources.get("CPU", 1) - shared_fitters * config.fitter.num_cpus
    return max(1, int(cpus // per_pipeline))


def run_jobs(jobs: Sequence[SequenceJob], config: GraphConfig, *, publish_url: str | None = None,
             progress: bool = True, skip_finished: bool = True, stop: threading.Event | None = None,
             on_result: Callable[[SequenceResult], None] | None = None,
             on_ready: Callable[[dict], None] | None = None) -> list[SequenceResult | None]:
    """Run every job; finished outputs are skipped (None in the result list) when `skip_finished`.
    on_ready: called with a sequence's start-up figures when its actors are warm, just before its
    capture clock starts (`SequencePipeline.startup`)."""
    resources = ensure_ray(config)
    stop = stop or threading.Event()
    todo = []
    for index, job in enumerate(jobs):
        if skip_finished and is_finished(job.save_path):
            log.info("%s: finished already (%s_meta.json exists), skipped", job.name or job.save_path, job.save_path)
            continue
        todo.append((index, job))
    results: list[SequenceResult | None] = [None] * len(jobs)
    publishing = bool(publish_url or config.publish.enabled)
    n_shared, num_gpus, shared_device = shared_fitter_plan(config, resources)
    workers = min(max(1, len(todo)), pipelines_at_once(config, resources, publishing, n_shared))
    fitters = SharedFitterPool(config, min(n_shared, workers), num_gpus, shared_device) if n_shared and todo else None
    if fitters is not None:
        log.info("%d lane(s) fit in %d shared fitter actor(s) on %s", workers, len(fitters.actors), shared_device)

    # One lane of actors per concurrent pipeline, reused by the sequences that run in it.
    lanes: queue.SimpleQueue = queue.SimpleQueue()
    all_lanes = [Lane() for _ in range(workers)]
    for slot, lane in enumerate(all_lanes):
        lanes.put((slot, lane))

    def run_one(index: int, job: SequenceJob) -> None:
        if stop.is_set():
            return
        slot, lane = lanes.get()
        try:
            pipeline = SequencePipeline(job, config, publish_url=publish_url, progress=progress, position=slot,
                                        stop=stop, lane=lane, on_ready=on_ready,
                                        shared_fitter=None if fitters is None else fitters.for_lane(slot))
            result = pipeline.run()
        finally:
            lanes.put((slot, lane))
        results[index] = result
        if on_result is not None:
            on_result(result)

    try:
        if workers == 1:
            for index, job in todo:
                run_one(index, job)
        else:
            with ThreadPoolExecutor(workers) as pool:
                futures = [pool.submit(run_one, index, job) for index, job in todo]
                for future in futures:
                    future.result()
    finally:
        for lane in all_lanes:
            lane.discard()
        if fitters is not None:
            fitters.shutdown()
    return results
