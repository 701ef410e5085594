"""Typed settings of the per-frame stages: defaults and allowed values in one place; each builds its stage.

`mmface4d reconstruct` (`pipeline.run.ReconstructOptions`) and the Ray graph (`graphs/config.py`,
which adds only its Ray, policy and test-aid sections, and the Ray resources of a stage) use these
same classes; the graph's actors receive them as they are. A field's allowed values live with it
(`setting(..., choices=...)`, `bound="positive"` / `"non_negative"`); `check_section` checks a
section against them and raises `ConfigError` naming the dotted key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from mmface4d_stream.errors import ConfigError, InputError
from mmface4d_stream.fit.fitter_config import RASTER_MODES
from mmface4d_stream.formats.sequence import DATASET_FPS
from mmface4d_stream.smooth import DEFAULT_CUTOFF_HZ, DEFAULT_ORDER

if TYPE_CHECKING:
    import numpy as np

    from mmface4d_stream.pipeline.stages import FitStage, LandmarkStage, SmoothStage


def setting(default: Any, *, choices: tuple | None = None, bound: str | None = None, on_off: bool = False):
    """A config field with its default and allowed values: `choices` (a tuple of values), `bound`
    ("positive" or "non_negative"; None passes), `on_off` (YAML 1.1's on/off booleans taken back as
    the words "on"/"off")."""
    metadata = {"choices": choices, "bound": bound, "on_off": on_off}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def field_rules(section) -> dict[str, dict]:
    """Per field name of a config dataclass its `setting` rules ({} for a plain field)."""
    return {f.name: dict(f.metadata) for f in dataclasses.fields(section)}


def check_section(section, prefix: str, where: str = "config") -> None:
    """Check every field of a config dataclass against its choices and bounds (ConfigError naming `prefix.key`)."""
    for name, rules in field_rules(section).items():
        value = getattr(section, name)
        key = f"{prefix}.{name}"
        choices = rules.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(str(c) for c in choices if c)}, got {value!r}", where)
        bound = rules.get("bound")
        if bound is None or value is None:
            continue
        if bound == "positive" and value <= 0:
            raise ConfigError(f"{key} must be positive, got {value!r}", where)
        if bound == "non_negative" and value < 0:
            raise ConfigError(f"{key} must not be negative, got {value!r}", where)


def settings_of(section, cls, **changes):
    """`section` (a config dataclass of `cls` or a subclass adding fields) as a plain `cls`, with
    `changes`: a stage's own settings without what the graph adds to them."""
    values = {f.name: getattr(section, f.name) for f in dataclasses.fields(cls)}
    return cls(**dict(values, **changes))


@dataclass
class SourceConfig:
    """What the camera source reads.

    cameras: dataset camera indices to read (None: all). max_frames: stop after this many frame
    sets (None: all). loop: replay the input this many times back to back (benchmarks reach long
    runs from a short capture; frame numbers keep counting). pace: emit frames at device rate
    (live replay of recordings) instead of as fast as the graph consumes them. live_keep (live
    graphs): frame sets the source holds for the graph (`LatestFrameSource`'s keep): 1, only the
    newest; 2, also the one before, so a graph late by up to one frame period loses no frame
    (those frames then wait up to one period longer).
    """

    cameras: list[int] | None = None
    max_frames: int | None = setting(None, bound="positive")
    loop: int = setting(1, bound="positive")
    pace: bool = False
    live_keep: int = setting(1, bound="positive")

    def open(self, inputs: Sequence[str]):
        """The frame source of `inputs` (dataset prefix or MKVs of one session), looped `loop` times."""
        from mmface4d_stream.pipeline.sources import LoopingSource, open_source

        source = open_source(inputs, cameras=self.cameras, max_frames=self.max_frames)
        return LoopingSource(source, self.loop) if self.loop > 1 else source


@dataclass
class LandmarkStageConfig:
    """The landmark stage. thumbnails: small JPEG crops per camera in the mesh stream (previews);
    thumbnail_hz: at most this many per camera per second of capture time (the preview shows at
    most 10; a thumbnail costs ~1-2 ms of CPU per camera frame)."""

    thumbnails: bool = False
    thumbnail_hz: float = setting(10.0, bound="positive")

    def build(self, n_cameras: int, cameras: Sequence[int] | None = None, color_crops: bool = False) -> LandmarkStage:
        """A `LandmarkStage` for the cameras at positions `cameras` (None: all `n_cameras`).
        color_crops: the face crops carry their RGB, what the fitter's photometric term reads
        (pass `FitStageConfig.needs_color`; off otherwise: nothing more to copy or send)."""
        from mmface4d_stream.pipeline.stages import LandmarkStage

        return LandmarkStage(n_cameras, thumbnails=self.thumbnails, cameras=cameras, color_crops=color_crops,
                             thumbnail_hz=self.thumbnail_hz)


@dataclass
class FitStageConfig:
    """The fit stage. face_model: template (built in, no licensed file) or bfm (needs bfm_folder).
    rig: a rig JSON from `mmface4d calibrate` (None: calibrated from the first frames). reference:
    the rig's reference camera (None: the middle one). device: torch device (cpu, cuda).
    torch_threads: intra-op threads of the fitting process (the fitter is many small tensor ops:
    one thread is fastest on a CPU shared with the decoders). raster: the fitter's rasterized depth
    term (`fit.fitter_config.FitterConfig.raster`, docs/fitter.md): off, depth or depth+color (the
    landmark stage then sends colour crops: `needs_color`). warm_iterations: LM iterations of a
    warm-started frame; offset_cg_iterations: conjugate-gradient steps of the offset step;
    fast_iterations: LM iterations of a hurried frame (the live policy's late ones; it also skips
    the offset step). These are the `FitterConfig` fields of these names; None: the fitter's
    defaults, 4, 6 and 2. live.yaml takes 2, 4 and 1: a live frame ~25 % cheaper at the same error
    against ground truth, a hurried one cheaper still (README "Live path")."""

    face_model: str = setting("template", choices=("template", "bfm"))
    bfm_folder: str | None = None
    landmark_mapping: str | None = None
    device: str = "cpu"
    rig: str | None = None
    reference: int | None = None
    torch_threads: int = setting(1, bound="positive")
    raster: str = setting("off", choices=RASTER_MODES, on_off=True)
    warm_iterations: int | None = setting(None, bound="positive")
    offset_cg_iterations: int | None = setting(None, bound="positive")
    fast_iterations: int | None = setting(None, bound="positive")

    def fitter_config(self):
        """The fitter's settings (`fit.fitter_config.FitterConfig`) these stage settings choose."""
        from mmface4d_stream.fit.fitter_config import FitterConfig

        changes = {name: int(getattr(self, name)) for name in ("warm_iterations", "offset_cg_iterations", "fast_iterations")
                   if getattr(self, name) is not None}
        return FitterConfig(raster=self.raster, **changes)

    @property
    def needs_color(self) -> bool:
        """The fitter reads the face crops' colour (`LandmarkStageConfig.build(..., color_crops=)`)."""
        return self.raster == "depth+color"

    def stage_config(self, **changes) -> FitStageConfig:
        """These settings as a plain `FitStageConfig` (a subclass's extra fields dropped), with `changes`."""
        return settings_of(self, FitStageConfig, **changes)

    @property
    def model_key(self) -> tuple:
        """What identifies the loaded face model: equal keys share one model."""
        return self.face_model, self.bfm_folder, self.landmark_mapping

    def load_model(self):
        """None for the template (the fitter builds it from the first good frame), else the user's BFM."""
        if self.face_model == "template":
            return None
        if self.face_model == "bfm":
            if not self.bfm_folder:
                raise InputError("--face-model bfm needs --bfm-folder (the BFM is licensed per user)")
            from mmface4d_stream.face.models import BfmModel

            return BfmModel.load(self.bfm_folder, self.landmark_mapping)
        raise InputError(f"unknown face model {self.face_model!r} (template or bfm)")

    def set_torch_threads(self) -> None:
        """Give this process `torch_threads` intra-op threads."""
        import torch

        torch.set_num_threads(int(self.torch_threads))

    def build(self, rig_transforms: Sequence[np.ndarray] | None, model=None, fitter=None) -> FitStage:
        """A `FitStage` on `device` with the per-camera T_ref_from_cam `rig_transforms` (arrays or
        nested lists, as `FitStage` takes them; None: one camera); `model` from `load_model()` (None:
        template), `fitter`: a shared fitter's slot."""
        from mmface4d_stream.pipeline.stages import FitStage

        return FitStage(rig_transforms, model=model, config=self.fitter_config(), device=self.device, fitter=fitter)


@dataclass
class SmoothStageConfig:
    """Causal Butterworth on the fitted vertices (lag: 2.8 frames at 0 Hz with the defaults). Off by
    default: offline accuracy is better unfiltered; the live config turns it on against jitter."""

    enabled: bool = False
    cutoff_hz: float = setting(DEFAULT_CUTOFF_HZ, bound="positive")
    order: int = setting(DEFAULT_ORDER, bound="positive")

    def build(self, fps: float) -> SmoothStage:
        """A `SmoothStage` for meshes at `fps` frames per second."""
        from mmface4d_stream.pipeline.stages import SmoothStage

        return SmoothStage(self.cutoff_hz, self.order, float(fps))


@dataclass
class OutputConfig:
    """Mesh nut triplet per sequence (`<out>/<name>_{0,1,2}.nut` + faces + meta json) at `fps`."""

    write_meshes: bool = True
    fps: int = setting(DATASET_FPS, bound="positive")

    def build(self, save_path: str):
        """The `MeshNutSink` writing `save_path_{0,1,2}.nut` at `fps`."""
        from mmface4d_stream.pipeline.sinks import MeshNutSink

        return MeshNutSink(save_path, fps=self.fps)


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
    send_hwm: int = setting(4, bound="positive")
    offline_hwm: int = setting(256, bound="positive")
    send_timeout_s: float | None = 10.0
    wait_subscribers: int = setting(0, bound="non_negative")
    wait_timeout_s: float = 10.0
    curve_certificate: str | None = None
    history: int = setting(120, bound="non_negative")
    repair_url: str | None = None

    def publisher_options(self, url: str | None = None) -> dict:
        """Keyword arguments for `PublishActor` beyond its url (CURVE keys loaded and checked here)."""
        from mmface4d_stream.stream.curve import server_keys

        keys = server_keys(url or self.url, self.curve_certificate, "publish.curve_certificate")
        options = {"send_hwm": self.send_hwm, "offline_hwm": self.offline_hwm, "send_timeout_s": self.send_timeout_s,
                   "history": self.history, "repair_url": self.repair_url}
        if keys is not None:
            options.update(curve_public_key=keys.public, curve_secret_key=keys.secret)
        return options


__all__ = ["setting", "field_rules", "check_section", "settings_of", "SourceConfig", "LandmarkStageConfig", "FitStageConfig",
           "SmoothStageConfig", "OutputConfig", "PublishConfig"]
