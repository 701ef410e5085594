"""The causal audio-to-motion network: log-mel frames -> displacement coefficients per frame.

    features (B, T, F) -> linear -> causal dilated conv blocks (residual) -> GRU (+ style code)
                       -> linear -> normalized coefficients z (B, T, K)

Every layer is causal in the feature index: output `t` depends on feature frames `0..t` only.
The look-ahead (<= 100 ms) is applied by *which* output a mesh frame reads
(`features.last_feature_index`), so a mesh frame never sees audio later than its own end plus the
look-ahead. Coefficients in metres are `z * coeff_std`; the mesh is
`neutral + (coefficients @ basis).reshape(V, 3)`.

`StreamingState` runs the same network on feature frames as they arrive (live microphone): the
convolutions keep their last `(kernel - 1) * dilation` inputs and the GRU its hidden state, so
streamed outputs equal the offline outputs to float rounding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

__all__ = ["AnimatorConfig", "AudioToMotion", "StreamingState", "MAX_LOOKAHEAD_MS"]

MAX_LOOKAHEAD_MS = 100.0


@dataclass(frozen=True)
class AnimatorConfig:
    """Network shape. n_features: input features per frame; n_components: K; n_subjects: style codes;
    lookahead_ms: audio a mesh frame may read past its own end (0..100 ms)."""

    n_features: int
    n_components: int
    n_subjects: int
    hidden: int = 128
    style_dim: int = 16
    kernel: int = 3
    dilations: tuple[int, ...] = (1, 2, 4, 8)
    lookahead_ms: float = 66.0
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if not 0 <= self.lookahead_ms <= MAX_LOOKAHEAD_MS:
            raise ValueError(f"look-ahead must be 0..{MAX_LOOKAHEAD_MS:g} ms, got {self.lookahead_ms}")
        if min(self.n_features, self.n_components, self.n_subjects, self.hidden, self.kernel) < 1:
            raise ValueError(f"network sizes must be positive: {self}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dilations"] = list(self.dilations)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "AnimatorConfig":
        return cls(**{**d, "dilations": tuple(d["dilations"])})


class _CausalBlock(nn.Module):
    def __init__(self, channels: int, kernel: int, dilation: int, dropout: float):
        super().__init__()
        self.context = (kernel - 1) * dilation
        self.conv = nn.Conv1d(channels, channels, kernel, dilation=dilation)
        self.norm = nn.LayerNorm(channels)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, history: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, T); history (B, C, context) of earlier inputs (zeros at the start).
        Returns (output (B, C, T), the new history)."""
        if history is None:
            history = x.new_zeros(x.shape[0], x.shape[1], self.context)
        padded = torch.cat([history, x], dim=2)
        y = self.conv(padded)
        y = self.norm(y.transpose(1, 2)).transpose(1, 2)
        out = x + self.drop(nn.functional.gelu(y))
        return out, padded[:, :, padded.shape[2] - self.context:]


@dataclass
class StreamingState:
    """Carried between `AudioToMotion.step` calls: conv histories and the GRU hidden state."""

    histories: list[torch.Tensor | None] = field(default_factory=list)
    hidden: torch.Tensor | None = None


class AudioToMotion(nn.Module):
    """See the module docstring. `forward(features (B, T, F), style (B, S)) -> z (B, T, K)`."""

    def __init__(self, config: AnimatorConfig):
        super().__init__()
        self.config = config
        h = config.hidden
        self.inp = nn.Linear(config.n_features, h)
        self.blocks = nn.ModuleList(_CausalBlock(h, config.kernel, d, config.dropout) for d in config.dilations)
        self.styles = nn.Embedding(config.n_subjects, config.style_dim)
        nn.init.normal_(self.styles.weight, std=0.1)
        self.gru = nn.GRU(h + config.style_dim, h, batch_first=True)
        self.out = nn.Linear(h, config.n_components)

    def style_vector(self, subject_index: int | None) -> torch.Tensor:
        """(S,) the style code of a training subject, or the mean code (None)."""
        if subject_index is None:
            return self.styles.weight.mean(0)
        return self.styles.weight[subject_index]

    def forward(self, features: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        z, _ = self._run(features, style, StreamingState())
        return z

    def step(self, features: torch.Tensor, style: torch.Tensor, state: StreamingState) -> torch.Tensor:
        """Streaming: new feature frames (T, F) -> outputs (T, K); updates `state` in place."""
        z, new = self._run(features[None], style[None], state)
        state.histories, state.hidden = new.histories, new.hidden
        return z[0]

    def _run(self, features: torch.Tensor, style: torch.Tensor, state: StreamingState
             ) -> tuple[torch.Tensor, StreamingState]:
        x = self.inp(features).transpose(1, 2)
        histories = []
        for i, block in enumerate(self.blocks):
            x, hist = block(x, state.histories[i] if i < len(state.histories) else None)
            histories.append(hist)
        x = x.transpose(1, 2)
        s = style[:, None, :].expand(-1, x.shape[1], -1)
        y, hidden = self.gru(torch.cat([x, s], dim=2), state.hidden)
        return self.out(y), StreamingState(histories, hidden)
