"""Causal log-mel audio features, computed in torch from the waveform (no downloaded weights).

Feature frame `j` summarises the 25 ms of audio that *end* at `(j + 1) * hop` samples (10 ms hops
at 16 kHz): it depends on no sample at or after `(j + 1) * hop`, so a model that reads frames
`0..j` is causal in the audio. Audio before the start counts as silence.

Mesh frame `k` (30 fps) covers the audio `[k / 30, (k + 1) / 30)` s. With a look-ahead of
`L` samples it may read every feature frame up to `last_feature_index(k)`, the last one that ends at
or before `(k + 1) / 30 s + L`.

Mel scale: S. S. Stevens, J. Volkmann, E. B. Newman, "A scale for the measurement of the
psychological magnitude pitch", JASA 1937 (the HTK formula `2595 log10(1 + f / 700)`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmface4d_stream.formats.audio import DATASET_RATE_HZ, resample
import torch

__all__ = ["LogMelConfig", "LogMelExtractor", "StreamingLogMel", "last_feature_index", "mel_filterbank",
           "resample_to"]

SAMPLE_RATE_HZ = DATASET_RATE_HZ


@dataclass(frozen=True)
class LogMelConfig:
    """Log-mel analysis parameters. Times in samples at `rate` Hz.

    rate: sample rate the features are defined at (audio is resampled to it).
    window: analysis window (400 = 25 ms); hop: feature period (160 = 10 ms, 100 frames/s).
    n_fft: FFT size (>= window); n_mels: mel bands; f_min, f_max: band edges, Hz.
    """

    rate: int = SAMPLE_RATE_HZ
    window: int = 400
    hop: int = 160
    n_fft: int = 512
    n_mels: int = 40
    f_min: float = 60.0
    f_max: float = 7600.0

    def __post_init__(self) -> None:
        if not (0 < self.hop <= self.window <= self.n_fft):
            raise ValueError(f"need 0 < hop <= window <= n_fft, got {self.hop}, {self.window}, {self.n_fft}")
        if not (0 <= self.f_min < self.f_max <= self.rate / 2):
            raise ValueError(f"need 0 <= f_min < f_max <= rate / 2, got {self.f_min}, {self.f_max}")

    @property
    def frames_per_second(self) -> float:
        return self.rate / self.hop


def _hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(config: LogMelConfig) -> torch.Tensor:
    """Triangular mel filters, float32 (n_fft // 2 + 1, n_mels), each of unit area in Hz."""
    n_bins = config.n_fft // 2 + 1
    freqs = np.arange(n_bins) * config.rate / config.n_fft
    edges = _mel_to_hz(np.linspace(_hz_to_mel(config.f_min), _hz_to_mel(config.f_max), config.n_mels + 2))
    lo, centre, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None] - lo) / (centre - lo)
    falling = (hi - freqs[None]) / (hi - centre)
    weights = np.clip(np.minimum(rising, falling), 0.0, None) * (2.0 / (hi - lo))
    return torch.from_numpy(weights.T.astype(np.float32))


class LogMelExtractor(torch.nn.Module):
    """Waveform -> causal log-mel frames.

    forward(samples): float (S,) or (B, S) at `config.rate`, nominally in [-1, 1] ->
    float32 (T, n_mels) or (B, T, n_mels) with `T = S // hop`; natural-log power, floored at 1e-10.
    """

    def __init__(self, config: LogMelConfig = LogMelConfig()):
        super().__init__()
        self.config = config
        self.register_buffer("window", torch.hann_window(config.window, periodic=True), persistent=False)
        self.register_buffer("filters", mel_filterbank(config), persistent=False)

    def frames(self, framed: torch.Tensor) -> torch.Tensor:
        """Windows (..., window) float32 -> log-mel (..., n_mels)."""
        spectrum = torch.fft.rfft(framed * self.window, n=self.config.n_fft)
        power = spectrum.real.square() + spectrum.imag.square()
        return torch.log(torch.clamp(power @ self.filters, min=1e-10))

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        c = self.config
        single = samples.dim() == 1
        x = samples[None] if single else samples
        x = x.to(torch.float32)
        n_frames = x.shape[-1] // c.hop
        # Left padding makes frame j end exactly at sample (j + 1) * hop.
        x = torch.nn.functional.pad(x, (c.window - c.hop, 0))
        framed = x[..., : (n_frames - 1) * c.hop + c.window].unfold(-1, c.window, c.hop) if n_frames else \
            x.new_zeros(x.shape[0], 0, c.window)
        out = self.frames(framed)
        return out[0] if single else out


class StreamingLogMel:
    """The same features as `LogMelExtractor`, from audio that arrives in blocks of any size.

    `push(block)` takes float32 (n,) samples and returns the log-mel frames (m, n_mels) completed
    by them, equal to the offline extractor's frames at the same indices (to float32 rounding).
    """

    def __init__(self, extractor: LogMelExtractor):
        self.extractor = extractor
        c = extractor.config
        self._tail = np.zeros(c.window - c.hop, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        self.frames_emitted = 0

    def push(self, block: np.ndarray) -> torch.Tensor:
        c = self.extractor.config
        self._pending = np.concatenate([self._pending, np.asarray(block, dtype=np.float32).reshape(-1)])
        n = len(self._pending) // c.hop
        if n == 0:
            return torch.zeros(0, c.n_mels)
        used = self._pending[: n * c.hop]
        self._pending = self._pending[n * c.hop:]
        x = torch.from_numpy(np.concatenate([self._tail, used]))
        self._tail = x[-(c.window - c.hop):].numpy().copy() if c.window > c.hop else self._tail
        framed = x[: (n - 1) * c.hop + c.window].unfold(-1, c.window, c.hop)
        self.frames_emitted += n
        with torch.no_grad():
            return self.extractor.frames(framed)


def last_feature_index(frame: int | np.ndarray, fps: float, lookahead_samples: int, config: LogMelConfig):
    """Index of the last feature frame mesh frame `frame` may read (may be -1 for none).

    Mesh frame k may use audio before `(k + 1) / fps` s plus `lookahead_samples`; feature j ends at
    `(j + 1) * hop`. Exact in integers when fps is an integer (30 for the dataset).
    """
    k = np.asarray(frame, dtype=np.int64)
    fps_num, fps_den = _as_fraction(fps)
    # end sample = (k + 1) * rate / fps + L, floored; j = floor(end / hop) - 1
    end = ((k + 1) * config.rate * fps_den + lookahead_samples * fps_num) // fps_num
    out = end // config.hop - 1
    return int(out) if out.ndim == 0 else out


def _as_fraction(fps: float) -> tuple[int, int]:
    if float(fps).is_integer():
        return int(fps), 1
    from fractions import Fraction

    f = Fraction(fps).limit_denominator(1001)
    return f.numerator, f.denominator


def resample_to(samples: np.ndarray, rate: int, target: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """Polyphase resampling of float32 (S,) from `rate` to `target` Hz (`formats.audio.resample`)."""
    return resample(samples, rate, target)
