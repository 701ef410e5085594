"""The actors of one sequence and the per-frame chain between them: `SequenceGraph` builds them.

    source -> landmarks -> fitter -> [smoother] -> {encoder, publisher}

`SequenceGraph` creates the actors (or re-opens those a `Lane` kept from its last sequence),
calibrates the rig, warms them up, wires one frame tick through them (a Ray compiled graph or plain
actor calls), brings them back to a checkpoint after a crash and closes them. Driving a sequence
(ticks in flight, restarts, the meta json) is `graphs.frame_graph.SequencePipeline`'s.
`SharedFitterPool` holds the fitter actors shared by many lanes (`fitter.shared`).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import ray

from actors import FitActor, FrontActor, LandmarkActor, SharedFitActor, SinkActor, SourceActor, StreamLost
from actors.records import Checkpoint
from graphs.config import GraphConfig
from mmface4d_stream.errors import InputError, PipelineError

log = logging.getLogger(__name__)

# Exceptions that mean an actor's process is gone (restartable), as opposed to a stage raising.
try:
    from ray.exceptions import RayChannelError, RayChannelTimeoutError
except ImportError:  # pragma: no cover - older Ray
    RayChannelError = RayChannelTimeoutError = ()
_ACTOR_LOST = tuple(e for e in (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
                                RayChannelError) if isinstance(e, type))
_TIMEOUTS = tuple(e for e in (ray.exceptions.GetTimeoutError, RayChannelTimeoutError) if isinstance(e, type))


def ready_line(startup: dict) -> str:
    """"ready after … s (actors … s, warm-up … s, rig …)": a graph's start-up figures
    (`SequenceGraph.startup`) as the log and the live console say them."""
    rig = startup.get("rig") or {}
    how = {"file": "rig from file", "one camera": "one camera"}.get(rig.get("rig"), "")
    if rig.get("rig") == "calibrated":
        how = f"rig calibrated in {rig['seconds']:.1f} s"
    warm = startup.get("warm_up") or {}
    return (f"ready after {startup.get('ready_s', 0.0):.1f} s (actors {startup.get('actors_s', 0.0):.1f} s, "
            f"warm-up {warm.get('seconds', 0.0):.1f} s{', ' + how if how else ''})")


def actor_lost(exc: BaseException) -> bool:
    """Whether `exc` means that an actor's process (or the lane's stream in a shared fitter) is gone:
    the sequence can resume from its checkpoint."""
    if isinstance(exc, _ACTOR_LOST):
        return True
    return isinstance(exc, ray.exceptions.RayTaskError) and isinstance(original_error(exc), StreamLost)


def original_error(exc: BaseException) -> BaseException:
    """The exception a stage raised, out of Ray's wrappers (a failure propagates through later stages)."""
    seen = set()
    while isinstance(exc, ray.exceptions.RayTaskError) and id(exc) not in seen:
        seen.add(id(exc))
        cause = getattr(exc, "cause", None)
        if not isinstance(cause, BaseException):
            break
        exc = cause
    return exc


@dataclass
class SequenceJob:
    """One sequence to reconstruct: its inputs (MKVs of one session, one dataset prefix, or
    ["kinect"]) and the output prefix (`save_path_{0,1,2}.nut`, `_faces.npy`, `_meta.json`)."""

    inputs: list[str]
    save_path: str
    name: str | None = None
    kinect: dict | None = None
    record_dir: str | None = None


class Lane:
    """Actor processes kept from one sequence to the next (one lane per concurrently running pipeline).

    Starting an actor costs seconds on a small machine (a process importing torch, MediaPipe,
    PyAV); a folder of short sequences would spend most of its time there. A pipeline given a
    lane re-opens the lane's actors for its sequence instead (`open(...)` takes the constructor's
    arguments) and leaves them in the lane when it ends well; after a failure they are discarded.
    """

    def __init__(self):
        self.actors: dict[str, object] = {}
        self.sequences = 0

    def discard(self) -> None:
        """Kill the kept actors."""
        for actor in self.actors.values():
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
        self.actors.clear()


def shared_fitter_plan(config: GraphConfig, resources: dict) -> tuple[int, float, str]:
    """How a run fits, from `fitter.shared` and the cluster's resources: (number of shared fitter
    actors, GPUs each reserves, the device they fit on); (0, 0.0, "") when every lane has its own
    fitter actor. `auto` shares when the cluster has GPUs (one actor per `fitter.num_gpus` GPUs, on
    cuda); `on` also without them (one actor on `fitter.device`); a compiled graph owns its actors,
    so `auto` does not share with `ray.compiled` (and the config rejects `on` with it)."""
    fitter = config.fitter
    if fitter.shared == "off" or config.ray.compiled:
        return 0, 0.0, ""
    gpus = float(resources.get("GPU", 0.0))
    if gpus >= fitter.num_gpus:
        return max(1, int(gpus // fitter.num_gpus + 1e-9)), fitter.num_gpus, "cuda"
    if fitter.shared == "on":
        return 1, 0.0, fitter.device
    return 0, 0.0, ""


class SharedFitterPool:
    """The shared fitter actors of a run (`SharedFitActor`, one per GPU); lane `i` uses actor `i % n`.

    An actor reserves `fitter.num_cpus` CPUs and `num_gpus` GPUs once, whatever the number of lanes
    it serves. Ray restarts a crashed one without limit: the lanes bound it, each giving up on its
    sequence after `ray.max_restarts` restarts.
    """

    def __init__(self, config: GraphConfig, count: int, num_gpus: float, device: str):
        stage_config = config.fitter.stage_config(device=device)
        cls = ray.remote(SharedFitActor).options(num_cpus=config.fitter.num_cpus, num_gpus=num_gpus, max_restarts=-1)
        self.device = device
        self.actors = [cls.remote(stage_config, config.fitter.batch_window_ms, config.fitter.max_batch)
                       for _ in range(count)]
        try:
            ray.get([actor.ping.remote() for actor in self.actors])
        except ray.exceptions.RayActorError as exc:
            self.shutdown()
            if exc.actor_init_failed:  # e.g. a BFM folder without the model: the user's to fix
                lines = [line for line in str(exc).splitlines() if line.strip()]
                reason = re.sub(r"^[\w.]+(Error|Exception): ", "", lines[-1].strip())  # the class is noise to a user
                raise InputError(f"the shared fitter did not start: {reason}") from None
            raise

    def for_lane(self, index: int):
        return self.actors[index % len(self.actors)]

    def shutdown(self) -> None:
        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
        self.actors = []


class SequenceGraph:
    """The actors of one sequence and the per-frame chain between them (building, not driving).

    `build` creates (or re-opens a lane's) actors, calibrates the rig and warms them up; `submit`
    puts one frame tick through the chain; `resume` brings the actors back to a checkpoint after a
    crash; `collect`, `finalize` and `release` end the sequence. `SequencePipeline` drives it.

    shared_fitter: a `SharedFitActor` actor (of a `SharedFitterPool`) that fits this sequence in a
    stream of its own; None: the graph has its own `FitActor` actor.
    """

    def __init__(self, job: SequenceJob, config: GraphConfig, publish_url: str | None = None,
                 lane: Lane | None = None, shared_fitter=None):
        self.job = job
        self.config = config
        self.publish_url = publish_url if publish_url else (config.publish.url if config.publish.enabled else None)
        self.live = config.policy.mode == "live"
        # SmoothActor, encoder and publisher in one actor (`SinkActor`): one actor hop after the fitter.
        # Plain actor calls only: a compiled graph with the fused sink hung here (not investigated).
        self.fused = config.ray.fused_sinks and not config.ray.compiled
        # The source actor may run the lane's one landmark stage (`FrontActor`): one hop fewer, and
        # the full-resolution frame set stays in its process. Plain actor calls only, as above.
        self.fused_front = config.ray.fused_landmarks and not config.ray.compiled
        self.sink_parts: set[str] = set()
        self.fault = dataclasses.asdict(config.faults) if config.faults.stage else None
        self._dag = None
        self.lane = lane
        self.actors: dict[str, object] = lane.actors if lane is not None else {}
        self._open_args: dict[str, tuple[tuple, dict]] = {}  # this sequence's arguments per actor
        self._reused: set[str] = set()  # actors taken over from the lane's earlier sequences
        self.endpoint: str | None = None
        if shared_fitter is not None and config.ray.compiled:
            raise ValueError("a shared fitter serves plain actor calls only (ray.compiled false)")
        self.shared = shared_fitter
        # This sequence's stream in the shared fitter (unique: lanes run the same names on re-runs).
        self.stream_key = f"{job.name or Path(job.save_path).name}-{uuid.uuid4().hex[:8]}"
        self.next_tick = 0  # the next frame tick to submit; it keeps counting through restarts
        self.startup: dict = {}  # seconds of the start-up phases, and how the rig was obtained
        self.info: dict = {}

    # ----------------------------------------------------------------------------- actors

    def _remote(self, cls, num_cpus: float = 0.0, restarts: int | None = None):
        max_restarts = self.config.ray.max_restarts if restarts is None else restarts
        return ray.remote(cls).options(num_cpus=num_cpus, max_restarts=max_restarts)

    def _actor(self, key: str, cls, *args, num_cpus: float = 0.0, restarts: int | None = None, **kwargs):
        """This sequence's actor `key`: the lane's one re-opened with these arguments, or a new one.
        Returns the pending `open` call (None for a new actor)."""
        self._open_args[key] = (args, kwargs)
        if key in self.actors:
            self._reused.add(key)
            return self.actors[key].open.remote(*args, **kwargs)
        self.actors[key] = self._remote(cls, num_cpus, restarts).remote(*args, **kwargs)
        return None

    @property
    def _per_camera(self) -> bool:
        return self.config.landmarks.per_camera and self._n_cameras > 1

    @property
    def _landmarks_in_source(self) -> bool:
        """The landmark stage runs inside the source actor (`ray.fused_landmarks`, one landmark stage)."""
        return self.fused_front and not self._per_camera

    @property
    def _landmark_keys(self) -> list[str]:
        """The keys of the actors that detect landmarks: one per camera (`landmarks.<position>`), one
        for all (`landmarks`), or the source actor itself (`FrontActor`)."""
        if self._landmarks_in_source:
            return ["source"]
        if self._per_camera:
            return [f"landmarks.{k}" for k in range(self._n_cameras)]
        return ["landmarks"]

    def _new_landmarks(self, missing_only: bool = False) -> list:
        """Create (or re-open, unless `missing_only`) this sequence's landmark actors, or the source
        actor's landmark part (not when `missing_only`: it goes with its process); the pending opens."""
        cfg = self.config
        keys = self._landmark_keys
        # Face crops carry their RGB when the fitter's photometric term reads it.
        options = dict(max_latency_ms=self._max_latency_ms, fault=self._fault_for("landmarks"),
                       color_crops=cfg.fitter.needs_color)
        stage = cfg.landmarks.stage_config()
        if self._landmarks_in_source:
            return [] if missing_only else [
                self.actors["source"].open_landmarks.remote(self._n_cameras, stage, **options)]
        cameras = [[k] for k in range(len(keys))] if len(keys) > 1 else [None]
        return [self._actor(key, LandmarkActor, self._n_cameras, stage, cameras=positions,
                            num_cpus=cfg.landmarks.num_cpus / len(keys), **options)
                for key, positions in zip(keys, cameras) if not (missing_only and key in self.actors)]

    def _fault_for(self, stage: str) -> dict | None:
        return self.fault if self.fault and self.fault["stage"] == stage else None

    def build(self) -> dict:
        """Create the actors (source first: its info sizes the rest) and calibrate the rig.

        The rig calibration (landmarks on the first frame sets) runs while the other actors start
        (their processes import torch, MediaPipe, PyAV): the fitter gets the extrinsics afterwards
        through `set_rig`.
        """
        cfg = self.config
        began = time.perf_counter()
        Path(self.job.save_path).parent.mkdir(parents=True, exist_ok=True)
        if self.lane is not None:
            self.lane.sequences += 1
        unwanted = (("publisher", "sink") + (() if cfg.smoother.enabled else ("smoother",))
                    + (("fitter",) if self.shared else ()) + (("smoother", "encoder") if self.fused else ()))
        for key in unwanted:
            if key in self.actors:  # per sequence (publisher) or not wanted now
                ray.kill(self.actors.pop(key), no_restart=True)
        opening = [self._actor(
            "source", FrontActor if self.fused_front else SourceActor, self.job.inputs, cfg.source, live=self.live, kinect=self.job.kinect,
            record_dir=self.job.record_dir, name=self.job.name, fault=self._fault_for("source"))]
        self.get([r for r in opening if r is not None], "source")
        self.info = self.get(self.actors["source"].info.remote(), "source")
        calibration = self.actors["source"].calibrate.remote(cfg.fitter.reference, cfg.fitter.rig, self.job.save_path)
        self._n_cameras = len(self.info["camera_indices"])
        for key in [k for k in self.actors if k.startswith("landmarks") and k not in self._landmark_keys]:
            ray.kill(self.actors.pop(key), no_restart=True)  # the lane's last sequence had other cameras
        opening = self._new_landmarks()
        if self.shared is None:
            opening.append(self._actor("fitter", FitActor, None, cfg.fitter.stage_config(), cfg.ray.checkpoint_every,
                                       fault=self._fault_for("fitter"), num_cpus=cfg.fitter.num_cpus,
                                       max_latency_ms=self._max_latency_ms, hurry_after_ms=self._hurry_after_ms))
        sinks = self._sink_parts()
        self.sink_parts = set(sinks)
        if self.fused:  # (per sequence, like the publisher: a new one each time, never restarted)
            self._actor("sink", SinkActor, sinks, restarts=0)
        else:
            # The encoder cannot append to a file a dead process left: it is never restarted.
            opening += [self._actor(part, SinkActor.PARTS[part], *args, restarts=0 if part == "encoder" else None,
                                    **kwargs) for part, (args, kwargs) in sinks.items()]
        # MediaPipe's graphs are built while the rig calibrates (a compiled graph builds its own).
        opening += [self.actors[key].warm_up.remote(None, not cfg.ray.compiled) for key in self._landmark_keys]
        self.transforms, self.reference = self.get(calibration, "source")
        self.startup["rig"] = self.get(self.actors["source"].rig_info.remote(), "source")
        self.get([r for r in opening if r is not None] + [self._open_fitter_stream()], "setup")
        if self.publish_url:
            self.endpoint = self.get(self._call("publisher", "get_endpoint"), "publisher")
            if self.live:
                self.get(self._call("publisher", "set_budget", cfg.policy.max_latency_ms, cfg.output.fps), "publisher")
            if cfg.publish.wait_subscribers:
                self.get(self._call("publisher", "wait_for_subscribers", cfg.publish.wait_subscribers,
                                    cfg.publish.wait_timeout_s), "publisher")
        self.get([a.ping.remote() for a in self.actors.values()], "setup")
        self.startup["actors_s"] = round(time.perf_counter() - began, 3)
        self._warm_up()
        self.startup["ready_s"] = round(time.perf_counter() - began, 3)
        return self.info

    def _sink_parts(self) -> dict[str, tuple[tuple, dict]]:
        """The sequence's sinks after the fitter, each as the (args, kwargs) of its actor's `open`:
        smoother (when enabled), encoder, publisher (when publishing)."""
        cfg = self.config
        parts = {}
        if cfg.smoother.enabled:
            parts["smoother"] = ((cfg.smoother, float(cfg.output.fps)), {"fault": self._fault_for("smoother")})
        parts["encoder"] = ((self.job.save_path, cfg.output.fps, cfg.output.write_meshes),
                            {"allow_gaps": self.live, "fault": self._fault_for("encoder")})
        if self.publish_url:
            parts["publisher"] = ((self.publish_url,), dict(drop_when_full=self.live, fault=self._fault_for("publisher"),
                                                            **cfg.publish.publisher_options(self.publish_url)))
        return parts

    def _has(self, part: str) -> bool:
        """Whether the graph has sink `part` (smoother, encoder, publisher): its own actor or in the `SinkActor`."""
        return part in self.actors or ("sink" in self.actors and part in self.sink_parts)

    def _call(self, part: str, method: str, *args, **kwargs):
        """The pending call of sink `part`'s `method`, on its own actor or through the `SinkActor`."""
        if part in self.actors:
            return getattr(self.actors[part], method).remote(*args, **kwargs)
        return self.actors["sink"].call.remote(part, method, *args, **kwargs)

    @property
    def _max_latency_ms(self) -> float | None:
        return self.config.policy.max_latency_ms if self.live else None

    @property
    def _hurry_after_ms(self) -> float | None:
        return self.config.policy.hurry_after_ms if self.live else None

    def _warm_up(self) -> None:
        """Live: warm every stage on a pre-roll frame set before the capture clock starts: the
        landmark actors' first inference and depth registration tables (their MediaPipe graphs are
        built during `build`), the fitter's torch calls, model pack and template (the stream keeps
        the pre-roll's fit as its warm start). Offline nothing waits for the graph, and the first
        frame must fit from a cold start as `mmface4d reconstruct` does: no pre-roll. Nor with a
        compiled graph, whose loop thread builds MediaPipe on first use."""
        began = time.perf_counter()
        a = self.actors
        keys = self._landmark_keys
        if self.config.ray.compiled or not self.live:
            self.startup["warm_up"] = {"seconds": 0.0, "preroll": False}
            return
        preroll = a["source"].preroll.remote()
        parts = [a[key].warm_up.remote(preroll) for key in keys]
        if self.shared is None:
            fitted = a["fitter"].warm_up.remote(*parts)
        else:
            fitted = self.shared.warm_up.remote(self.stream_key, *parts)
        try:
            fit = self.get(fitted, "fitter")
        except ray.exceptions.RayTaskError as exc:
            # The capture (and its recording) must not depend on the warm-up: the first frames pay instead.
            error = str(original_error(exc)).splitlines()[0]
            log.warning("sequence %s: the warm-up failed (%s); starting cold", self.info["name"], error)
            self.startup["warm_up"] = {"seconds": round(time.perf_counter() - began, 3), "preroll": True,
                                       "error": error}
            return
        self.startup["warm_up"] = {"seconds": round(time.perf_counter() - began, 3), "preroll": True,
                                   "fit_seconds": fit["seconds"], "face_found": fit["lost"] is False}

    def ready(self, on_ready: Callable[[dict], None] | None = None) -> None:
        """Every actor is warm: say so (log, the status topic, `on_ready`) just before the clock starts."""
        name = self.info["name"]
        log.info("sequence %s: %s", name, ready_line(self.startup))
        if self.live and self._has("publisher"):  # (offline there is no clock: the topology comes first)
            self.get(self._call("publisher", "announce", "ready"), "publisher")
        if on_ready is not None:
            on_ready(dict(self.startup, name=name))

    def _open_fitter_stream(self, state: dict | None = None):
        """The pending call that gives the fitter this sequence's rig and a fresh stream (or the
        stream at a checkpoint's fitter `state`, whose ticks continue from the next one to submit)."""
        if self.shared is None:
            return self.actors["fitter"].set_rig.remote(self.transforms)
        return self.shared.open_stream.remote(self.stream_key, self.transforms, self.config.ray.checkpoint_every,
                                              self._fault_for("fitter"), state, self.next_tick,
                                              self._max_latency_ms, self._hurry_after_ms)

    def get(self, refs, stage: str):
        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as exc:
            cause = original_error(exc)
            if isinstance(cause, InputError):
                raise InputError(str(cause).splitlines()[0]) from None
            raise

    # ------------------------------------------------------------------------------ graph

    def _wire(self, tick, call) -> list:
        """The per-frame chain from `tick`; `call(method, arg)` binds (compiled graph) or submits
        (plain actor calls) one actor method. Returns the outputs: encoder report [, publisher], or
        the `SinkActor`'s (report, publisher) pair (`results` reads either)."""
        a = self.actors
        # One landmark actor per camera (or one for all): the fitter joins their parts by frame.
        if self._landmarks_in_source:
            parts = [call(a["source"].read_detect, tick)]
        else:
            frame_set = call(a["source"].read, tick)
            parts = [call(a[key].detect, frame_set) for key in self._landmark_keys]
        if self.shared is not None:  # (plain calls only) the tick orders this lane's calls in the shared actor
            packet = self.shared.fit.remote(self.stream_key, tick, *parts)
        else:
            packet = call(a["fitter"].fit, *parts)
        if "sink" in a:
            return [call(a["sink"].consume, packet)]
        if "smoother" in a:
            packet = call(a["smoother"].smooth, packet)
        outputs = [call(a["encoder"].write, packet)]
        if "publisher" in a:
            outputs.append(call(a["publisher"].publish, packet))
        return outputs

    def _compile(self):
        from ray.dag import InputNode, MultiOutputNode

        with InputNode() as tick:
            dag = MultiOutputNode(self._wire(tick, lambda method, *args: method.bind(*args)))
        return dag.experimental_compile(_max_inflight_executions=self.inflight + 1,
                                        _submit_timeout=self.config.ray.frame_timeout_s)

    @property
    def inflight(self) -> int:
        """Ticks this lane keeps in the graph at once (`PolicyConfig.inflight` for its camera count)."""
        return self.config.policy.inflight(self._n_cameras)

    def submit(self, tick: int) -> list:
        """Put frame tick `tick` through the chain (the compiled graph, built on first use, or plain
        actor calls); the pending outputs: encoder report [, publisher's capture → publish ms]."""
        if self.config.ray.compiled:
            if self._dag is None:
                self._dag = self._compile()
            return self._dag.execute(tick)
        return self._wire(tick, lambda method, *args: method.remote(*args))

    @staticmethod
    def results(outputs: list) -> tuple:
        """A tick's (encoder `FrameReport` or None, capture → publish ms or None) from its outputs."""
        if len(outputs) == 1 and isinstance(outputs[0], tuple):
            return outputs[0]
        return outputs[0], outputs[1] if len(outputs) > 1 else None

    def teardown(self) -> None:
        """Stop the compiled graph. MediaPipe inside the landmark actors keeps Ray's teardown waiting
        forever (Ray 2.60), so those actors (stateless) are killed first and rebuilt when needed."""
        if self._dag is not None:
            dag, self._dag = self._dag, None
            for key in self._landmark_keys:
                landmarks = self.actors.pop(key, None)
                if landmarks is not None:
                    ray.kill(landmarks, no_restart=True)
            try:
                dag.teardown()
            except Exception as exc:  # a dead actor can make teardown complain; the graph is gone either way
                log.debug("compiled graph teardown: %s", exc)

    def resume(self, frame: int, checkpoint: Checkpoint) -> None:
        """After an actor restart: wait for every actor, rewind the stream to `frame`, restore state."""
        self._new_landmarks(missing_only=True)  # (those killed with a compiled graph's teardown)
        a = self.actors
        everyone = list(a.values()) + ([self.shared] if self.shared is not None else [])
        deadline = time.monotonic() + self.config.ray.restart_wait_s
        while True:
            try:
                ray.get([actor.ping.remote() for actor in everyone], timeout=self.config.ray.ping_timeout_s)
                break
            except _ACTOR_LOST + (ray.exceptions.GetTimeoutError,):
                if time.monotonic() > deadline:
                    raise PipelineError(f"sequence {self.info['name']}: actors did not come back after a crash") from None
                time.sleep(0.5)
        # A restarted actor runs its constructor again, with the arguments it was created with: for an
        # actor taken over from the lane those were another sequence's, so it opens this one again.
        ray.get([a[key].open.remote(*args, **kwargs) for key, (args, kwargs) in self._open_args.items()
                 if key in self._reused and (key in ("source", "fitter") or key.startswith("landmarks")) and key in a])
        if self._landmarks_in_source:  # a restarted source process has lost its landmark part
            ray.get(self._new_landmarks())
        if self.shared is None:
            ray.get(a["fitter"].set_rig.remote(self.transforms))
            calls = [a["fitter"].restore.remote(checkpoint.fitter)]
        else:  # a restarted shared fitter knows no stream; a surviving one drops the lane's old ticks
            calls = [self._open_fitter_stream(checkpoint.fitter)]
        calls += [a[key].reset.remote() for key in self._landmark_keys] + [a["source"].start.remote(frame)]
        if self._has("smoother"):
            calls.append(self._call("smoother", "restore", checkpoint.smoother))
        ray.get(calls)

    def collect(self) -> tuple[dict, object, dict, list[str]]:
        """The end of the sequence's figures: (fitter summary, triangles, source stats, recorded
        files); the shared fitter's stream is closed and the source stopped. A dead actor loses
        only its part (logged): the files are finalized by `finalize` either way."""
        a = self.actors
        timeouts = self.config.ray
        summary, faces, source_stats = {}, None, {}
        if self.shared is None:
            fitter_calls = [a["fitter"].summary.remote(), a["fitter"].faces.remote()]
        else:
            fitter_calls = [self.shared.summary.remote(self.stream_key), self.shared.faces.remote(self.stream_key)]
        try:
            summary, faces, source_stats = ray.get(fitter_calls + [a["source"].stats.remote()],
                                                   timeout=timeouts.collect_timeout_s)
        except Exception as exc:  # a dead fitter loses only the summary: the files are finalized below
            log.warning("could not collect the fitter summary: %s", exc)
        if self.shared is not None:
            try:
                ray.get(self.shared.close_stream.remote(self.stream_key), timeout=timeouts.collect_timeout_s)
            except Exception as exc:  # gone with a crashed actor already
                log.debug("closing the shared fitter stream: %s", exc)
        recorded = []
        try:
            recorded = ray.get(a["source"].close.remote(), timeout=timeouts.close_timeout_s)
        except Exception as exc:
            log.warning("closing the source: %s", exc)
        return summary, faces, source_stats, recorded

    def fill_to(self, frames: int) -> None:
        """Live end: frames captured after the last mesh are dropped ones too: the file covers them all."""
        try:
            ray.get(self._call("encoder", "fill_to", int(frames)), timeout=self.config.ray.collect_timeout_s)
        except Exception as exc:
            log.warning("filling the last dropped frames: %s", exc)

    def finalize(self, faces, meta: dict, success: bool, end_reason: str) -> dict:
        """Close the mesh files (with `meta` when `success`) and the stream (`end` with `end_reason`);
        returns the encoder's counts ({} when it is gone)."""
        counts = {}
        try:
            counts = ray.get(self._call("encoder", "close", faces, meta, success), timeout=self.config.ray.close_timeout_s)
        except Exception as exc:
            log.error("finalizing %s: %s", self.job.save_path, exc)
        if self._has("publisher"):
            try:
                ray.get(self._call("publisher", "close", end_reason), timeout=self.config.ray.publisher_close_timeout_s)
            except Exception as exc:
                log.warning("closing the publisher: %s", exc)
        return counts

    def release(self, keep: bool) -> None:
        """Kill the actors, or leave them in the lane for its next sequence when `keep` (the
        publisher, and a `SinkActor` with it, is per sequence: always killed)."""
        a = self.actors
        for key in list(a):
            if not keep or key in ("publisher", "sink"):
                ray.kill(a.pop(key), no_restart=True)

    def discard(self) -> None:
        """After a failed build: kill every actor and close the shared fitter's stream."""
        for actor in self.actors.values():
            ray.kill(actor, no_restart=True)
        self.actors.clear()
        if self.shared is not None:
            self.shared.close_stream.remote(self.stream_key)
