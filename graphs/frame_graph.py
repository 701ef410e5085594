"""The per-frame graph of one sequence, live or offline, as Ray actors: `SequencePipeline` drives it.

    source -> landmarks -> fitter -> [smoother] -> {encoder, publisher}

The driver feeds frame ticks; each tick pulls one frame set through every actor. Actors execute
their calls in order, so the fitter's warm start and the smoother's state follow the frames.
`ray.compiled: true` declares the chain once as a Ray compiled graph (`InputNode`,
`experimental_compile`: shared-memory channels, no per-call scheduling); otherwise every tick is a
chain of plain actor calls. At most `SequenceGraph.inflight` ticks are in the graph at once: memory
is constant offline, latency is bounded live (where the source also keeps only the newest frame).

A GPU is shared, not owned: with `fitter.shared` the fitter box is a `SharedFitActor` actor (one per
GPU, started by `graphs.runner`) that serves the pipelines of many lanes, each through its own
stream (warm start, identity, template, checkpoints), and fits the frames that are ready from
different lanes in one solve; sources and landmark actors stay per lane, on CPUs.

Faults: an actor whose process dies is restarted by Ray (`max_restarts`); the driver rewinds the
stream to the last checkpoint (fitter warm start and smoother state, taken every
`ray.checkpoint_every` frames), restores it and goes on; the encoder ignores frames it has
already written. A restarted shared fitter has lost every lane's stream: each lane notices
(`StreamLost`) and resumes the same way. A stage that raises stops the sequence with a
`PipelineError` naming stage, sequence, camera and frame; the encoder always finalizes its files.

Building the actors and wiring a tick through them is `graphs.sequence_graph.SequenceGraph`'s;
this module drives a sequence (ticks in flight, restarts) and writes its meta json.
"""

from __future__ import annotations

import collections
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import ray
from tqdm import tqdm

from actors.records import Checkpoint, FrameReport
from graphs.config import GraphConfig
from graphs.sequence_graph import (_ACTOR_LOST, _TIMEOUTS, Lane, SequenceGraph, SequenceJob, SharedFitterPool,
                                   actor_lost, original_error, shared_fitter_plan)
from mmface4d_stream.errors import InputError, PipelineError, StageError
from mmface4d_stream.pipeline.latency_budget import DROP_CAUSES, LatencyBudget, latency_stats, steady_rate

log = logging.getLogger(__name__)

__all__ = ["SequencePipeline", "SequenceResult", "SequenceJob", "Lane", "SharedFitterPool", "shared_fitter_plan",
           "original_error", "throughput_figures"]


@dataclass
class SequenceResult:
    """What a run produced: the meta json's content plus per-stage latency figures."""

    job: SequenceJob
    meta: dict
    ok: bool
    error: str | None = None
    interrupted: bool = False
    stage_ms: dict[str, dict[str, float]] = field(default_factory=dict)


def throughput_figures(start: float, arrivals: list[float], emit_ns: list[int], clock_start: float | None = None) -> dict:
    """Setup time and steady-state rate of a run.

    start: perf_counter at the run's start; arrivals: perf_counter when each fitted frame's result
    reached the driver; emit_ns: the source's emit time (host monotonic ns) of each fitted frame;
    clock_start: perf_counter when the source started (the capture clock). `first_frame_seconds`
    is start-up to the first mesh (actors, warm-up, rig calibration, the first fit);
    `first_mesh_after_clock_s` the first mesh after the clock started; `steady_frames_per_second`
    the frames fitted per second of the run after the first mesh, on the frames' own emit times
    (`latency_budget.steady_rate`: a late first mesh does not inflate it).
    """
    if not arrivals:
        return {"first_frame_seconds": None, "first_mesh_after_clock_s": None, "steady_frames_per_second": None}
    stamped = [t for t in emit_ns if t]
    if len(stamped) == len(arrivals):
        steady = steady_rate(stamped)
    else:  # no emit times (not expected from our sources): arrivals, which a late start skews
        span = arrivals[-1] - arrivals[0]
        steady = (len(arrivals) - 1) / span if len(arrivals) > 1 and span > 0 else None
    return {"first_frame_seconds": round(arrivals[0] - start, 3),
            "first_mesh_after_clock_s": None if clock_start is None else round(arrivals[0] - clock_start, 3),
            "steady_frames_per_second": None if steady is None else round(steady, 3)}


class SequencePipeline:
    """Runs one sequence through its `SequenceGraph` to the end (or until `stop` is set): ticks in
    flight (at most `SequenceGraph.inflight`), checkpoints, restarts after a crash, the meta json.

    shared_fitter: a `SharedFitActor` actor (of a `SharedFitterPool`) that fits this sequence in a
    stream of its own; None: the pipeline has its own `FitActor` actor. on_ready: called with the
    start-up figures (`self.startup`) when every actor is warm, just before the capture clock starts.
    """

    def __init__(self, job: SequenceJob, config: GraphConfig, publish_url: str | None = None,
                 progress: bool = True, position: int = 0, stop: threading.Event | None = None,
                 lane: Lane | None = None, shared_fitter=None, on_ready: Callable[[dict], None] | None = None):
        self.job = job
        self.config = config
        self.graph = SequenceGraph(job, config, publish_url, lane, shared_fitter)
        self.progress = progress
        self.position = position
        self.stop = stop or threading.Event()
        self.live = self.graph.live
        self.restarts = 0
        self.resumed_from: list[int] = []  # the frame each restart rewound the stream to
        self.reports: list[FrameReport] = []
        self._arrivals: list[float] = []  # perf_counter when each frame's result reached the driver
        self._publish_ms: dict[int, float] = {}  # capture → publish milliseconds per published frame
        self.on_ready = on_ready
        self.checkpoint = Checkpoint()  # the last one the encoder handed back
        self._clock_start: float | None = None  # perf_counter when the source started

    @property
    def startup(self) -> dict:
        """Seconds of the start-up phases, and how the rig was obtained."""
        return self.graph.startup

    @property
    def endpoint(self) -> str | None:
        """The mesh stream's address (None: not published)."""
        return self.graph.endpoint

    def run(self) -> SequenceResult:
        cfg = self.config
        graph = self.graph
        start = time.perf_counter()
        interrupted = False
        error: str | None = None
        failure: BaseException | None = None
        try:
            graph.build()
        except BaseException as exc:
            graph.discard()
            if isinstance(exc, InputError):
                log.error("%s: %s", self.job.name or self.job.save_path, exc)
                return SequenceResult(self.job, {}, False, str(exc))
            raise
        total = graph.info["frames"] or None
        name = graph.info["name"]
        graph.ready(self.on_ready)
        self._clock_start = time.perf_counter()
        graph.get(graph.actors["source"].start.remote(0), "source")
        self.checkpoint = Checkpoint()
        bar = tqdm(total=total, desc=name, unit="frame", file=sys.stderr, disable=not self.progress,
                   position=self.position, leave=True, dynamic_ncols=True)
        try:
            while True:
                try:
                    self._run_stream(bar)
                    break
                except _TIMEOUTS as exc:
                    raise PipelineError(f"sequence {name}: no result within ray.frame_timeout_s = "
                                        f"{cfg.ray.frame_timeout_s} s; the graph is stuck ({type(exc).__name__})") from None
                except _ACTOR_LOST + (ray.exceptions.RayTaskError,) as exc:
                    if not actor_lost(exc):
                        raise
                    graph.teardown()
                    self.restarts += 1
                    if self.restarts > cfg.ray.max_restarts:
                        raise PipelineError(f"sequence {name}: an actor died {self.restarts} times, giving up "
                                            f"({type(exc).__name__}: {exc})") from None
                    resume = self.checkpoint.frame + 1
                    self.resumed_from.append(resume)
                    log.warning("sequence %s: an actor died (%s); restarting from frame %d (restart %d of %d)",
                                name, type(exc).__name__, resume, self.restarts, cfg.ray.max_restarts)
                    graph.resume(resume, self.checkpoint)
        except KeyboardInterrupt:
            interrupted = True
            log.warning("sequence %s: interrupted; finalizing the outputs", name)
        except ray.exceptions.RayTaskError as exc:
            failure = original_error(exc)
            if isinstance(failure, (StageError, InputError)):
                error = str(failure).splitlines()[0]
            else:
                error = f"{type(failure).__name__}: {failure}"
        except PipelineError as exc:
            failure, error = exc, str(exc)
        finally:
            bar.close()
            graph.teardown()
        # Live capture ends with Ctrl-C: that is a normal end, so the meta json is written.
        success = error is None and (not interrupted or self.live)
        meta = self._finish(start, success, interrupted, error)
        result = SequenceResult(self.job, meta, success, error, interrupted, meta.get("stage_latency_ms", {}))
        if failure is not None and isinstance(failure, StageError):
            log.error("%s", error)
        return result

    def _run_stream(self, bar) -> None:
        cfg = self.config
        inflight: collections.deque = collections.deque()
        ended = False
        while True:
            while not ended and not self.stop.is_set() and len(inflight) < self.graph.inflight:
                tick = self.graph.next_tick
                inflight.append(self.graph.submit(tick))
                self.graph.next_tick = tick + 1
            if not inflight:
                break
            head = inflight.popleft()
            report, publish_ms = self.graph.results(ray.get(head, timeout=cfg.ray.frame_timeout_s))
            if report is None:
                ended = True
                continue
            if publish_ms is not None:
                self._publish_ms[report.frame] = publish_ms
            if report.checkpoint is not None:
                self.checkpoint = report.checkpoint.carry_model(self.checkpoint)
                report.checkpoint = None
            if report.kind != "replayed":
                self.reports.append(report)
                self._arrivals.append(time.perf_counter())
                bar.update(1 + report.filled)
                if report.kind == "dropped":
                    bar.set_postfix_str(f"dropped {sum(r.kind == 'dropped' for r in self.reports)}", refresh=False)
        if self.stop.is_set() and not ended:
            raise KeyboardInterrupt

    def _finish(self, start: float, success: bool, interrupted: bool, error: str | None) -> dict:
        """Collect the end figures, write the meta json with the files, release the actors."""
        graph = self.graph
        elapsed = time.perf_counter() - start
        summary, faces, source_stats, recorded = graph.collect()
        kinds = collections.Counter(r.kind for r in self.reports)
        if self.live and source_stats.get("captured"):
            graph.fill_to(int(source_stats["captured"]))
        fitted_reports = [(r, t) for r, t in zip(self.reports, self._arrivals) if r.kind in ("mesh", "lost")]
        fitted = {r.frame for r, _ in fitted_reports}
        last = max([r.frame for r in self.reports] + [int(source_stats.get("captured", 0)) - 1 if self.live else -1])
        dropped = [f for f in range(last + 1) if f not in fitted]
        stage_ms: dict[str, list[float]] = collections.defaultdict(list)
        budget = LatencyBudget(self.config.policy.max_latency_ms, 1000.0 / self.config.output.fps)
        dropped_by_cause: dict[str, list[int]] = {cause: [] for cause in DROP_CAUSES}
        for r in self.reports:
            for stage, ms in r.timings_ms.items():
                stage_ms[stage].append(ms)
            if r.latency_ms is not None:
                stage_ms["end_to_end"].append(r.latency_ms)
            if r.kind in ("mesh", "lost"):
                budget.record(r.timings_ms, self._publish_ms.get(r.frame, r.latency_ms), r.hurried)
            elif r.kind == "dropped":
                dropped_by_cause.setdefault(r.cause or "too_old", []).append(r.frame)
        # Frames with no report at all were never taken by the graph: the source had a newer one.
        reported = {f for frames in dropped_by_cause.values() for f in frames}
        dropped_by_cause["source_busy"] = [f for f in dropped if f not in reported]
        for cause, frames in dropped_by_cause.items():
            budget.drop(cause, len(frames))
        frames_done = last + 1
        meta = {
            "source": list(self.job.inputs),
            "cameras": [{"index": i, "serial": s} for i, s in zip(graph.info["camera_indices"], graph.info["serials"])],
            "reference_camera": graph.reference,
            "device": self.config.fitter.device,
            "smoothed": self.config.smoother.enabled,
            "policy": self.config.policy.mode,
            "compiled_graph": self.config.ray.compiled,
            **summary,
            "frames_in": frames_done,
            "input_frames": None if self.live else graph.info.get("input_frames"),
            "frames_captured": source_stats.get("captured"),
            "frames_dropped": dropped,
            "source_frames_dropped": source_stats.get("dropped", 0),
            "restarts": self.restarts,
            "resumed_from_frames": list(self.resumed_from),
            "seconds": round(elapsed, 3),
            "frames_per_second": round(frames_done / elapsed, 3) if elapsed > 0 else None,
            **throughput_figures(start, [t for _, t in fitted_reports], [r.t_source_ns for r, _ in fitted_reports],
                                 self._clock_start),
            "startup": dict(self.startup),
            # The first mesh: its frame (0: no frame set was lost to the start-up) and its capture → encoded ms.
            "first_mesh": None if not fitted_reports else {
                "frame": fitted_reports[0][0].frame,
                "latency_ms": None if fitted_reports[0][0].latency_ms is None else round(fitted_reports[0][0].latency_ms, 1)},
            "frames_fitted": len(fitted),
            "drops_by_cause": {cause: len(frames) for cause, frames in dropped_by_cause.items()},
            "frames_dropped_by_cause": dropped_by_cause,
            "latency_budget": (dict(budget.report(), measured_to="publish" if self._publish_ms else "encoded")
                               if self.live else None),
            "stage_latency_ms": {k: latency_stats(v) for k, v in sorted(stage_ms.items())},
            "recorded": recorded,
            "first_recorded_host_ns": source_stats.get("first_recorded_host_ns"),
            "counts": dict(kinds),
        }
        if error:
            meta["error"] = error
        if interrupted:
            meta["interrupted"] = True
        end_reason = "interrupted" if interrupted else "error" if error else "finished"
        meta.update(graph.finalize(faces, meta, success, end_reason))
        # A lane keeps healthy actors for its next sequence; the publisher is per sequence.
        graph.release(graph.lane is not None and success and not interrupted and self.restarts == 0)
        return meta
