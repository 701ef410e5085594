"""A user's own pretrained speech encoder (a local TorchScript file) as the audio features.

Interface of the file (`torch.jit.save` of a scripted or traced module; nothing is downloaded):

    forward(waveform float32 (1, S) mono at 16 kHz, nominally in [-1, 1]) -> features float32 (1, T, D)

at a known frame rate R (frames per second of audio): the module's float attribute
`frame_rate_hz` when it has one, else `--audio-encoder-rate` (default 50 Hz, as wav2vec2 and
HuBERT use). The encoder's features are used *instead of* the log-mel features (the network's
input then has D features per frame).

Causality and alignment. An encoder may look at its whole input (wav2vec2's transformer does), so
it is never run on the whole clip: encoder frame `j` is the *last* output frame of the encoder run
on the `window_s` seconds of audio that end at sample `e_j = floor((j + 1) * 16000 / R)` (audio
before the start counts as silence, as for the log-mel). It therefore depends on no sample at or
after `e_j`, for any encoder. The encoder frames are then put on the log-mel's 100 Hz grid by
sample-and-hold: grid frame `i`, which ends at `(i + 1) * hop` samples, carries the last encoder
frame that ends at or before it (zeros before the first one). Everything downstream (mesh frame k
<-> audio `[k / 30, (k + 1) / 30)` s, the look-ahead, the causal network) is the log-mel path's.

Offline (training, `eval`, `run` on a wav) and live (the microphone) compute the very same frames
(`StreamingEncoderFeatures`): the offline path is the streaming one fed the whole waveform.
Cost: one encoder call on `window_s` of audio per encoder frame, i.e. R calls per second of audio.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mmface4d_stream.animate.features import SAMPLE_RATE_HZ, LogMelConfig
from mmface4d_stream.errors import InputError

__all__ = ["DEFAULT_ENCODER_RATE_HZ", "DEFAULT_ENCODER_WINDOW_S", "EncoderSpec", "EncoderFeatures",
           "StreamingEncoderFeatures", "open_encoder"]

DEFAULT_ENCODER_RATE_HZ = 50.0
DEFAULT_ENCODER_WINDOW_S = 1.0


@dataclass(frozen=True)
class EncoderSpec:
    """What a model file records about its encoder.

    path: the TorchScript file (absolute); rate_hz: encoder frames per second of audio;
    dim: D, features per encoder frame; window_s: audio each encoder call sees, seconds.
    """

    path: str
    rate_hz: float
    dim: int
    window_s: float = DEFAULT_ENCODER_WINDOW_S

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EncoderSpec":
        return cls(str(d["path"]), float(d["rate_hz"]), int(d["dim"]), float(d["window_s"]))


def _load_module(path: Path) -> torch.jit.ScriptModule:
    if not path.is_file():
        raise InputError("audio encoder file not found", path)
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # torch raises RuntimeError/ValueError variants for non-TorchScript files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"not a TorchScript audio encoder (torch.jit.load: {first})", path) from None
    module.eval()
    return module


def _module_rate(module) -> float | None:
    try:
        rate = getattr(module, "frame_rate_hz")
    except (AttributeError, RuntimeError):
        return None
    try:
        return float(rate)
    except (TypeError, ValueError):
        return None


class EncoderFeatures:
    """Waveform -> encoder features on the log-mel's 100 Hz grid (see the module docstring).

    `__call__(samples)`: float (S,) at 16 kHz (torch or numpy) -> float32 torch (S // hop, D), the
    same length and time grid as `LogMelExtractor`'s frames. `config` is the grid's `LogMelConfig`.
    """

    def __init__(self, module, spec: EncoderSpec, config: LogMelConfig = LogMelConfig()):
        self.module, self.spec, self.config = module, spec, config
        if config.rate != SAMPLE_RATE_HZ:
            raise ValueError(f"audio encoders take {SAMPLE_RATE_HZ} Hz audio, the grid is at {config.rate} Hz")
        self.window = int(round(spec.window_s * config.rate))

    @property
    def n_features(self) -> int:
        return self.spec.dim

    def frame_end(self, j: int) -> int:
        """End sample (exclusive) of encoder frame j: floor((j + 1) * rate / R)."""
        return int(math.floor((j + 1) * self.config.rate / self.spec.rate_hz + 1e-9))

    @torch.no_grad()
    def encode_window(self, window: np.ndarray) -> torch.Tensor:
        """float32 (W,) audio ending at an encoder frame's end -> (D,), the encoder's last output frame."""
        x = torch.from_numpy(np.ascontiguousarray(window, dtype=np.float32))[None]
        try:
            out = self.module(x)
        except Exception as exc:  # a module that cannot take (1, S) float32
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"audio encoder failed on a (1, {x.shape[1]}) waveform ({first})",
                             self.spec.path) from None
        if not isinstance(out, torch.Tensor) or out.dim() != 3 or out.shape[0] != 1 or out.shape[1] < 1 \
                or out.shape[2] != self.spec.dim:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InputError(f"audio encoder gives {shape} for a (1, {x.shape[1]}) waveform, "
                             f"expected (1, T, {self.spec.dim})", self.spec.path)
        return out[0, -1].to(torch.float32)

    def streaming(self) -> "StreamingEncoderFeatures":
        return StreamingEncoderFeatures(self)

    def __call__(self, samples) -> torch.Tensor:
        x = samples.detach().cpu().numpy() if isinstance(samples, torch.Tensor) else np.asarray(samples)
        if x.ndim != 1:
            raise ValueError(f"encoder features take mono (S,) audio, got {x.shape}")
        return self.streaming().push(x)


class StreamingEncoderFeatures:
    """`EncoderFeatures` on audio that arrives in blocks of any size.

    `push(block)` takes float32 (n,) samples and returns the grid frames (m, D) completed by them
    (one per `hop` samples), equal to the offline frames at the same indices (they are computed by
    the same calls on the same windows).
    """

    def __init__(self, features: EncoderFeatures):
        self.features = features
        self._buffer = np.zeros(features.window, dtype=np.float32)  # silence before the start
        self._buffer_start = -features.window  # absolute sample index of _buffer[0]
        self._received = 0
        self._grid_emitted = 0
        self._encoded = 0  # encoder frames computed so far
        self._held = torch.zeros(features.spec.dim)
        self.frames_emitted = 0

    def push(self, block: np.ndarray) -> torch.Tensor:
        f = self.features
        hop = f.config.hop
        block = np.asarray(block, dtype=np.float32).reshape(-1)
        self._buffer = np.concatenate([self._buffer, block])
        self._received += len(block)
        rows = []
        for i in range(self._grid_emitted, self._received // hop):
            end = (i + 1) * hop
            while f.frame_end(self._encoded) <= end:
                e = f.frame_end(self._encoded)
                a = e - f.window - self._buffer_start
                self._held = f.encode_window(self._buffer[a:a + f.window])
                self._encoded += 1
            rows.append(self._held)
        self._grid_emitted = self._received // hop
        self.frames_emitted = self._grid_emitted
        # Keep what the next encoder frame's window needs.
        keep_from = f.frame_end(self._encoded) - f.window - self._buffer_start
        if keep_from > 0:
            self._buffer = self._buffer[keep_from:]
            self._buffer_start += keep_from
        return torch.stack(rows) if rows else torch.zeros(0, f.spec.dim)


def open_encoder(path: str | os.PathLike, rate_hz: float | None = None,
                 window_s: float = DEFAULT_ENCODER_WINDOW_S, expect_dim: int | None = None,
                 trained_rate_hz: float | None = None, config: LogMelConfig = LogMelConfig()) -> EncoderFeatures:
    """Load a TorchScript encoder and check it on one window of silence.

    rate_hz: the frame rate when the module has no `frame_rate_hz` attribute (default 50 Hz); a
    value that contradicts the attribute is an error. expect_dim, trained_rate_hz: the D and R a
    model was trained with (a model file's encoder must give the same).
    Raises `InputError` (one line) for a missing file, a non-TorchScript file or a wrong shape.
    """
    path = Path(path).expanduser().resolve()
    module = _load_module(path)
    attr = _module_rate(module)
    if attr is not None and rate_hz is not None and abs(attr - rate_hz) > 1e-6:
        raise InputError(f"--audio-encoder-rate {rate_hz:g} contradicts the module's frame_rate_hz {attr:g}", path)
    if attr is not None and trained_rate_hz is not None and abs(attr - trained_rate_hz) > 1e-6:
        raise InputError(f"audio encoder runs at frame_rate_hz {attr:g}, the model was trained at "
                         f"{trained_rate_hz:g} Hz", path)
    if trained_rate_hz is not None:
        rate_hz = trained_rate_hz
    rate = attr if attr is not None else (DEFAULT_ENCODER_RATE_HZ if rate_hz is None else float(rate_hz))
    if not 0 < rate <= config.frames_per_second:
        raise InputError(f"audio encoder frame rate must be in (0, {config.frames_per_second:g}] Hz, got {rate:g}",
                         path)
    if not window_s > 0 or window_s * config.rate < config.rate / rate:
        raise InputError(f"audio encoder window must cover at least one encoder frame, got {window_s:g} s", path)
    window = int(round(window_s * config.rate))
    with torch.no_grad():
        try:
            probe = module(torch.zeros(1, window))
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"audio encoder failed on a (1, {window}) waveform ({first})", path) from None
    if not isinstance(probe, torch.Tensor) or probe.dim() != 3 or probe.shape[0] != 1 or probe.shape[1] < 1:
        shape = tuple(probe.shape) if isinstance(probe, torch.Tensor) else type(probe).__name__
        raise InputError(f"audio encoder gives {shape} for a (1, {window}) waveform, expected (1, T, D)", path)
    dim = int(probe.shape[2])
    if expect_dim is not None and dim != expect_dim:
        raise InputError(f"audio encoder gives {dim} features per frame, the model was trained with {expect_dim}",
                         path)
    return EncoderFeatures(module, EncoderSpec(str(path), rate, dim, float(window_s)), config)
