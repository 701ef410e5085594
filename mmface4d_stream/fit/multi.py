"""Many independent face streams fitted by one object: the API a GPU shared by several sequences uses.

Each stream lives in a slot (`open_stream()`): its own warm start, identity estimate, template
model (when fitting the built-in template), lost-face counters and checkpoint state, exactly as one
`FaceFitter` would keep them. `process({slot: observation, ...})` fits the next frame of every
given stream; streams that share a model shape are solved together.
"""

from __future__ import annotations

from typing import Mapping

from mmface4d_stream.face.models import FaceModel
from mmface4d_stream.fit.fitter import FaceFitter, FitterConfig
from mmface4d_stream.fit.types import FitResult, FrameObservation

__all__ = ["MultiStreamFitter"]


class MultiStreamFitter:
    """Fit several streams (slots) with one model and config on one device.

    Args:
        model: the face model shared by every slot; None: each slot builds its own template from its
            first frame with a face and depth (a template is per subject).
        config: `FitterConfig`.  device: torch device.
    """

    def __init__(self, model: FaceModel | None = None, config: FitterConfig | None = None, device="cpu"):
        self.config = config or FitterConfig()
        self.device = device
        self._model = model
        self._slots: dict[int, FaceFitter] = {}
        self._next = 0

    @property
    def slots(self) -> list[int]:
        """The open slots, in opening order."""
        return list(self._slots)

    def open_stream(self) -> int:
        """A new slot with a fresh stream state; returns its id."""
        slot = self._next
        self._next += 1
        self._slots[slot] = FaceFitter(self._model, self.config, self.device)
        return slot

    def close_stream(self, slot: int) -> None:
        """Forget a slot (its id is not reused)."""
        self._fitter(slot)
        del self._slots[slot]

    def reset_stream(self, slot: int) -> None:
        """Restart a slot's stream (warm start, identity, counters); a shared model is kept, a
        template built by this slot is dropped (the next sequence may be another subject)."""
        self._slots[slot] = FaceFitter(self._model, self.config, self.device)

    def model(self, slot: int) -> FaceModel | None:
        """The model slot `slot` fits (None while its template is not built yet)."""
        return self._fitter(slot).model

    def process(self, frames: Mapping[int, FrameObservation]) -> dict[int, FitResult]:
        """Fit the next frame of each given slot; {slot: FitResult} (same semantics as `FaceFitter.process`)."""
        return {slot: self._fitter(slot).process(obs) for slot, obs in frames.items()}

    def stream_state(self, slot: int, include_model: bool | None = None) -> dict:
        """Picklable state of one slot (see `FaceFitter.stream_state`)."""
        return self._fitter(slot).stream_state(include_model)

    def restore_stream_state(self, slot: int, state: dict) -> None:
        """Continue slot `slot` from a `stream_state` (of this or another fitter with the same config)."""
        self._fitter(slot).restore_stream_state(state)

    def _fitter(self, slot: int) -> FaceFitter:
        try:
            return self._slots[slot]
        except KeyError:
            raise KeyError(f"no open fitter slot {slot}") from None
