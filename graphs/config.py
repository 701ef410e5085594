"""The graph's one config tree: dataclasses with the defaults, read from and written to YAML.

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

from mmface4d_stream.errors import InputError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


class ConfigError(InputError):
    """A bad config value: the message names the file and the dotted key."""


@dataclass
class SourceConfig:
    """What the camera source reads.

    cameras: dataset camera indices to read (None: all). max_frames: stop after this many frame
    sets (None: all). loop: replay the input this many times back to back (benchmarks reach long
    runs from a short capture; frame numbers keep counting). pace: emit frames at device rate
    (live replay of recordings) instead of as fast as the graph consumes them.
    """

    cameras: list[int] | None = None
    max_frames: int | None = None
    loop: int = 1
    pace: bool = False


@dataclass
class LandmarksConfig:
    """LandmarkDetector actors: thumbnails for previews, CPUs reserved for the stage. per_camera:
    one actor per camera (the cameras of a frame set run in parallel, the fitter joins them by
    frame; the stage's num_cpus are split between them), else one actor for every camera."""

    thumbnails: bool = False
    num_cpus: float = 1.0
    per_camera: bool = True


@dataclass
class FitterConfig:
    """Fitter actor. face_model: template (built in) or bfm (needs bfm_folder). rig: a rig JSON from
    `mmface4d calibrate` (None: calibrated from the first frames). reference: the rig's reference
    camera (None: the middle one). torch_threads: intra-op threads of the fitter's process.

    shared: one fitter actor serves many sequences (lanes), solving the frames that are ready
    together: `auto` when the cluster has GPUs (one actor per `num_gpus` GPUs, fitting on cuda),
    `on` always (without GPUs one actor on `device`), `off` a fitter actor per lane. A shared actor
    waits at most batch_window_ms after the first ready frame for other lanes' frames and solves at
    most max_batch frames at once. raster: the fitter's rasterized depth term
    (`fit.fitter_config.FitterConfig.raster`): off or depth.
    """

    face_model: str = "template"
    bfm_folder: str | None = None
    landmark_mapping: str | None = None
    device: str = "cpu"
    rig: str | None = None
    reference: int | None = None
    torch_threads: int = 1
    num_cpus: float = 1.0
    shared: str = "off"
    num_gpus: float = 1.0
    batch_window_ms: float = 5.0
    max_batch: int = 64
    raster: str = "off"


@dataclass
class SmootherConfig:
    """Causal Butterworth on the fitted vertices (lag: 2.8 frames at 0 Hz with the defaults). Off by
    default: offline accuracy is better unfiltered; the live config turns it on against jitter."""

    enabled: bool = False
    cutoff_hz: float = 5.0
    order: int = 5


@dataclass
class OutputConfig:
    """Mesh nut triplet per sequence (`<out>/<name>_{0,1,2}.nut` + faces + meta json)."""

    write_meshes: bool = True
    fps: int = 30


@dataclass
class PublishConfig:
    """ZeroMQ mesh stream (docs/protocol.md). The graph never waits on the socket: each
    subscriber has its own queue (send_hwm messages live, offline_hwm offline) and a subscriber
    that does not keep up loses messages alone, counted from the gaps in `seq`. send_timeout_s
    bounds only the wait to deliver `end` offline. The last `history` meshes are kept for
    subscribers that ask for what they missed (`subscribe --save` does), on repair_url (default: the
    next port). A url beyond loopback needs
    curve_certificate (a ZeroMQ certificate holding the server's secret key): loopback has no
    authentication, any local process may subscribe."""

    enabled: bool = False
    url: str = "tcp://127.0.0.1:5555"
    send_hwm: int = 4
    offline_hwm: int = 256
    send_timeout_s: float | None = 10.0
    wait_subscribers: int = 0
    wait_timeout_s: float = 10.0
    curve_certificate: str | None = None
    history: int = 120
    repair_url: str | None = None

    def publisher_options(self, url: str | None = None) -> dict:
        """Keyword arguments for `ZmqPublisher` beyond its url (CURVE keys loaded and checked here)."""
        from mmface4d_stream.stream.curve import server_keys

        keys = server_keys(url or self.url, self.curve_certificate, "publish.curve_certificate")
        options = {"send_hwm": self.send_hwm, "offline_hwm": self.offline_hwm, "send_timeout_s": self.send_timeout_s,
                   "history": self.history, "repair_url": self.repair_url}
        if keys is not None:
            options.update(curve_public_key=keys.public, curve_secret_key=keys.secret)
        return options


@dataclass
class PolicyConfig:
    """Flow control. mode: offline (drop nothing; at most max_inflight frames in the graph, so
    memory is constant) or live (the source keeps only the newest frame and counts the ones the
    graph was too busy to take; a frame older than max_latency_ms when it reaches the landmark
    stage is dropped there). Both: dropped frames are gaps in the frame numbers; the mesh file
    repeats the previous mesh for them and lists them in its meta json."""

    mode: str = "offline"
    max_inflight: int = 3
    max_latency_ms: float = 500.0


@dataclass
class RayConfig:
    """address: an existing cluster (None: start a local Ray with num_cpus). compiled: run the
    per-frame graph as a Ray compiled graph (else plain actor calls). max_restarts: a crashed actor
    is restarted this many times and resumes from the last checkpoint, taken every
    checkpoint_every frames. max_pipelines: sequences processed at once (None: as many as the
    cluster's CPUs allow). frame_timeout_s: longest wait for one frame's result before the
    graph counts as hung (an error)."""

    address: str | None = None
    num_cpus: int | None = None
    compiled: bool = False
    max_restarts: int = 2
    checkpoint_every: int = 15
    max_pipelines: int | None = None
    frame_timeout_s: float = 300.0


@dataclass
class FaultConfig:
    """Test aid: make `stage` (source, landmarks, fitter, smoother, encoder, publisher) raise
    (kind: raise) or kill its process (kind: exit, once) at `frame`, and/or sleep delay_ms per frame."""

    stage: str | None = None
    frame: int | None = None
    kind: str | None = None
    delay_ms: float = 0.0


@dataclass
class GraphConfig:
    """Everything one per-frame graph needs."""

    source: SourceConfig = field(default_factory=SourceConfig)
    landmarks: LandmarksConfig = field(default_factory=LandmarksConfig)
    fitter: FitterConfig = field(default_factory=FitterConfig)
    smoother: SmootherConfig = field(default_factory=SmootherConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


_CHOICES = {
    "fitter.face_model": ("template", "bfm"),
    "fitter.shared": ("auto", "on", "off"),
    "fitter.raster": ("off", "depth"),
    "policy.mode": ("offline", "live"),
    "faults.stage": (None, "source", "landmarks", "fitter", "smoother", "encoder", "publisher"),
    "faults.kind": (None, "raise", "exit"),
}
# Choice keys whose words YAML 1.1 reads as booleans (`shared: on`): taken back as the words.
_ON_OFF = {"fitter.shared", "fitter.raster"}
_POSITIVE = {"policy.max_inflight", "source.loop", "output.fps", "publish.send_hwm", "publish.offline_hwm",
             "fitter.torch_threads",
             "smoother.order", "smoother.cutoff_hz", "ray.checkpoint_every", "policy.max_latency_ms",
             "source.max_frames", "ray.num_cpus", "ray.max_pipelines", "ray.frame_timeout_s",
             "fitter.num_gpus", "fitter.max_batch"}
_NON_NEGATIVE = {"ray.max_restarts", "landmarks.num_cpus", "fitter.num_cpus", "faults.delay_ms",
                 "publish.wait_subscribers", "faults.frame", "publish.history",
                 "fitter.batch_window_ms"}


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
        if key in _ON_OFF and isinstance(value, bool):
            value = "on" if value else "off"
        setattr(instance, name, _check_value(key, hints[name], value, where))


def _validate(config: GraphConfig, where: str) -> None:
    for key, choices in _CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(str(c) for c in choices if c)}, got {value!r}", where)
    for key in _POSITIVE | _NON_NEGATIVE:
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value is None:
            continue
        if key in _POSITIVE and value <= 0:
            raise ConfigError(f"{key} must be positive, got {value!r}", where)
        if key in _NON_NEGATIVE and value < 0:
            raise ConfigError(f"{key} must not be negative, got {value!r}", where)
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
