"""The graph's one config tree: dataclasses with the defaults, read from and written to YAML.

The stages' sections (source, landmarks, fitter, smoother, output, publish) are the library's
typed stage configs (`mmface4d_stream.pipeline.stage_config`, shared with `mmface4d reconstruct`);
this module adds the Ray resources of the landmark and fitter actors and the graph's own sections
(policy, ray, faults). Allowed values live with the fields (`setting`).

A YAML file overrides any subset of the keys (`configs/defaults.yaml` lists them all with their
defaults); `load_config("configs/3-cam.yaml", overrides={"policy.mode": "live"})` gives a
`GraphConfig`. Unknown keys, wrong types and out-of-range values raise `ConfigError`, one line
naming the file and the dotted key.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from mmface4d_stream.errors import ConfigError
from mmface4d_stream.pipeline.stage_config import (FitStageConfig, LandmarkStageConfig, OutputConfig, PublishConfig,
                                                   SmoothStageConfig, SourceConfig, check_section, field_rules, setting,
                                                   settings_of)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class LandmarkActorsConfig(LandmarkStageConfig):
    """LandmarkActor actors: the stage's settings plus CPUs reserved for the stage. per_camera:
    one actor per camera (the cameras of a frame set run in parallel, the fitter joins them by
    frame; the stage's num_cpus are split between them), else one actor for every camera."""

    num_cpus: float = setting(1.0, bound="non_negative")
    per_camera: bool = True

    def stage_config(self) -> LandmarkStageConfig:
        """The stage's settings alone (what the actors receive)."""
        return settings_of(self, LandmarkStageConfig)


@dataclass
class FitterActorConfig(FitStageConfig):
    """Fitter actor: the fit stage's settings plus its Ray resources. num_cpus: CPUs a fitter actor
    reserves (per lane, or per shared actor).

    shared: one fitter actor serves many sequences (lanes), solving the frames that are ready
    together: `auto` when the cluster has GPUs (one actor per `num_gpus` GPUs, fitting on cuda),
    `on` always (without GPUs one actor on `device`), `off` a fitter actor per lane. A shared actor
    waits at most batch_window_ms after the first ready frame for other lanes' frames and solves at
    most max_batch frames at once. raster: the fitter's rasterized depth term
    (`fit.fitter_config.FitterConfig.raster`): off, depth or depth+color.
    """

    num_cpus: float = setting(1.0, bound="non_negative")
    shared: str = setting("off", choices=("auto", "on", "off"), on_off=True)
    num_gpus: float = setting(1.0, bound="positive")
    batch_window_ms: float = setting(5.0, bound="non_negative")
    max_batch: int = setting(64, bound="positive")


@dataclass
class PolicyConfig:
    """Flow control. mode: offline (drop nothing; at most max_inflight frames in the graph, so
    memory is constant) or live (the source keeps only the newest frame and counts the ones the
    graph was too busy to take; a frame older than max_latency_ms when it reaches the landmark
    stage is dropped there; one older than hurry_after_ms when it reaches the fitter is fitted the
    fast way: at most `FitterConfig.fast_iterations` LM iterations and no offset step, flagged
    `hurried`, counted in the meta json's `frames_hurried`; None: never). Both: dropped frames
    are gaps in the frame numbers; the mesh file repeats the previous mesh for them and lists them
    in its meta json. single_camera_inflight: frames in flight for a one-camera lane (None:
    max_inflight). A live lane takes at most (frames in flight) / (capture → publish latency)
    frames per second; one camera's ~60-70 ms in the machine's slow moments needs 3 at 30 fps,
    while more frames in flight on a lane whose cameras already exceed the CPU (3 cameras on two
    cores) only queue longer (live.yaml: 3 and 2; README "Live path")."""

    mode: str = setting("offline", choices=("offline", "live"))
    max_inflight: int = setting(3, bound="positive")
    max_latency_ms: float = setting(500.0, bound="positive")
    hurry_after_ms: float | None = setting(None, bound="positive")
    single_camera_inflight: int | None = setting(None, bound="positive")

    def inflight(self, n_cameras: int) -> int:
        """Frames a lane of `n_cameras` cameras keeps in the graph at once."""
        if n_cameras == 1 and self.single_camera_inflight is not None:
            return int(self.single_camera_inflight)
        return int(self.max_inflight)


@dataclass
class RayConfig:
    """address: an existing cluster (None: start a local Ray with num_cpus). worker_niceness: the
    Unix niceness of a local Ray's worker processes, where all of the graph's work runs (Ray's own
    default, 15, puts the actors below the raylet, the driver and every other ordinary process, so
    each of their wake-ups preempts a fit: latency jitter and drops in live capture); a cluster's
    workers keep the niceness the cluster was started with (`RAY_worker_niceness=0 ray start ...`).
    max_inline_bytes: a local Ray passes objects up to this size (a frame's face crops, a mesh)
    inline with the actor calls instead of through the shared-memory object store, whose every
    object costs the raylet, the writer and the reader ~2 ms of CPU more (Ray's default limit,
    100 KiB, sends a 1-camera face crop of ~200 KB through the store); a cluster keeps its own
    (`RAY_max_direct_call_object_size=... ray start ...`).
    compiled: run the
    per-frame graph as a Ray compiled graph (else plain actor calls). fused_sinks: smoother, encoder
    and publisher in one actor (`actors.sink_actor.SinkActor`: one actor call per frame after the
    fitter instead of three; the same files and stream; plain actor calls only: ignored
    with `compiled`). fused_landmarks: the landmark stage in the source actor
    (`actors.front_actor.FrontActor`) for lanes with one landmark stage (one camera, or
    `landmarks.per_camera` false): one actor call fewer per frame and the full-resolution frame set
    never crosses processes; the landmark CPUs are then not reserved apart; ignored with
    `compiled`. max_restarts: a crashed actor
    is restarted this many times and resumes from the last checkpoint, taken every
    checkpoint_every frames. max_pipelines: sequences processed at once (None: as many as the
    cluster's CPUs allow). frame_timeout_s: longest wait for one frame's result before the
    graph counts as hung (an error).

    The driver's other waits: restart_wait_s for every actor to answer again after a crash (each
    ping waits at most ping_timeout_s); collect_timeout_s for the end-of-sequence figures (fitter
    summary, shared stream closed, last dropped frames filled); close_timeout_s for the source and
    the encoder to finalize their files; publisher_close_timeout_s for the stream's `end`."""

    address: str | None = None
    num_cpus: int | None = setting(None, bound="positive")
    worker_niceness: int = setting(0, bound="non_negative")
    max_inline_bytes: int = setting(1 << 20, bound="positive")
    compiled: bool = False
    fused_sinks: bool = False
    fused_landmarks: bool = False
    max_restarts: int = setting(2, bound="non_negative")
    checkpoint_every: int = setting(15, bound="positive")
    max_pipelines: int | None = setting(None, bound="positive")
    frame_timeout_s: float = setting(300.0, bound="positive")
    restart_wait_s: float = setting(120.0, bound="positive")
    ping_timeout_s: float = setting(30.0, bound="positive")
    collect_timeout_s: float = setting(60.0, bound="positive")
    close_timeout_s: float = setting(120.0, bound="positive")
    publisher_close_timeout_s: float = setting(30.0, bound="positive")


@dataclass
class FaultConfig:
    """Test aid: make `stage` (source, landmarks, fitter, smoother, encoder, publisher) raise
    (kind: raise) or kill its process (kind: exit, once) at `frame`, and/or sleep delay_ms per frame."""

    stage: str | None = setting(None, choices=(None, "source", "landmarks", "fitter", "smoother", "encoder",
                                                "publisher"))
    frame: int | None = setting(None, bound="non_negative")
    kind: str | None = setting(None, choices=(None, "raise", "exit"))
    delay_ms: float = setting(0.0, bound="non_negative")


@dataclass
class GraphConfig:
    """Everything one per-frame graph needs."""

    source: SourceConfig = field(default_factory=SourceConfig)
    landmarks: LandmarkActorsConfig = field(default_factory=LandmarkActorsConfig)
    fitter: FitterActorConfig = field(default_factory=FitterActorConfig)
    smoother: SmoothStageConfig = field(default_factory=SmoothStageConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _check_value(key: str, annotation: Any, value: Any, where: str) -> Any:
    """`value` converted to `annotation` (int → float allowed), else ConfigError naming `key`."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_value(key, inner[0], value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}", where)
        return [_check_value(f"{key}[{i}]", args[0], v, where) for i, v in enumerate(value)]
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}", where)
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}", where)
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}", where)
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}", where)
        return value
    raise TypeError(f"unsupported config type {annotation!r} for {key}")


def _apply(instance: Any, data: Mapping, prefix: str, where: str) -> None:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'the config'} must be a mapping of keys, got {data!r}", where)
    hints = typing.get_type_hints(type(instance))
    names = [f.name for f in dataclasses.fields(instance)]
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in names:
            raise ConfigError(f"unknown key {key!r} (known under {prefix.rstrip('.') or 'the top level'}: "
                              f"{', '.join(names)})", where)
        current = getattr(instance, name)
        if dataclasses.is_dataclass(current):
            _apply(current, value, f"{key}.", where)
            continue
        if field_rules(instance)[name].get("on_off") and isinstance(value, bool):
            value = "on" if value else "off"
        setattr(instance, name, _check_value(key, hints[name], value, where))


def _validate(config: GraphConfig, where: str) -> None:
    for f in dataclasses.fields(config):
        check_section(getattr(config, f.name), f.name, where)
    if config.fitter.face_model == "bfm" and not config.fitter.bfm_folder:
        raise ConfigError("fitter.face_model bfm needs fitter.bfm_folder (the BFM is licensed per user)", where)
    if config.fitter.shared == "on" and config.ray.compiled:
        raise ConfigError("fitter.shared on needs ray.compiled false (a compiled graph owns its actors; "
                          "a shared fitter serves many graphs)", where)
    if config.publish.enabled:
        from mmface4d_stream.stream.curve import server_keys

        # A stream beyond loopback is refused here, in milliseconds, with the key that fixes it.
        server_keys(config.publish.url, config.publish.curve_certificate, "publish.curve_certificate")
    if config.smoother.cutoff_hz >= config.output.fps / 2:
        raise ConfigError(f"smoother.cutoff_hz must be below half of output.fps ({config.output.fps / 2} Hz), "
                          f"got {config.smoother.cutoff_hz}", where)


def resolve_config_path(name: str | os.PathLike) -> Path:
    """A config file: a path, or a name in `configs/` with or without `.yaml` ("3-cam")."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / path, CONFIG_DIR / f"{path}.yaml"):
        if candidate.is_file():
            return candidate
    known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"no config file {str(name)!r} (a path, or one of: {known})")


def config_from_dict(data: Mapping | None, where: str = "config") -> GraphConfig:
    """A validated `GraphConfig` from a (partial) nested mapping."""
    config = GraphConfig()
    if data:
        _apply(config, data, "", where)
    _validate(config, where)
    return config


def load_config(path: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None) -> GraphConfig:
    """Defaults, then the YAML file at `path` (if any), then dotted `overrides` ({"policy.mode": "live"})."""
    data: dict = {}
    where = "config"
    if path is not None:
        resolved = resolve_config_path(path)
        where = str(resolved)
        try:
            loaded = yaml.safe_load(resolved.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"not valid YAML{line}: {getattr(exc, 'problem', exc)}", where) from None
        data = loaded or {}
        if not isinstance(data, dict):
            raise ConfigError(f"the config must be a mapping of keys, got {type(data).__name__}", where)
    for dotted, value in (overrides or {}).items():
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{dotted}: {part} is not a section", where)
        node[parts[-1]] = value
    return config_from_dict(data, where)
