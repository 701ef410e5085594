"""Voice activity: where the speech of a session's recording starts and ends, in frames.

`preprocess` (the upstream `process_mkv`) keeps frames [start, end + 2) around the speech that
silero-vad finds (at least 500 ms of it), start/end being the frames of the first speech onset and
the last speech offset, and clips the audio to the same span (`FrameSpan.audio_slice`).
"""

from __future__ import annotations

import math
import os
from typing import Callable

import numpy as np

from mmface4d_stream.errors import InputError
from mmface4d_stream.formats.sequence import DATASET_FPS

#: Frame rate of the released dataset (frames/s): `FrameSpan`'s default.
FPS = DATASET_FPS  # the dataset's (and the Kinects') frame rate
MIN_SPEECH_MS = 500
#: Frames kept after the last speech frame (the upstream keeps [start, end + 2)).
TAIL_FRAMES = 2

#: (samples float32 (S,), rate Hz) -> (first speech onset s, last speech offset s) or None.
SpeechSpanFn = Callable[[np.ndarray, int], "tuple[float, float] | None"]


class FrameSpan:
    """Frames [start, stop) of a sequence at `fps` frames/s kept, and the matching audio samples."""

    def __init__(self, start: int, stop: int | None, fps: int = FPS):
        self.start, self.stop, self.fps = start, stop, fps

    def audio_slice(self, rate: int) -> slice:
        begin = round(self.start * rate / self.fps)
        end = None if self.stop is None else round(self.stop * rate / self.fps)
        return slice(begin, end)

    def __repr__(self) -> str:
        return f"FrameSpan({self.start}, {self.stop})"


def silero_speech_span(samples: np.ndarray, rate: int) -> tuple[float, float] | None:
    """First speech onset and last speech offset in seconds (silero-vad, >= 500 ms speech)."""
    import torch
    from silero_vad import get_speech_timestamps, load_silero_vad

    model = load_silero_vad()
    segments = get_speech_timestamps(
        torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)), model,
        sampling_rate=rate, min_speech_duration_ms=MIN_SPEECH_MS, return_seconds=True,
    )
    if not segments:
        return None
    return float(segments[0]["start"]), float(segments[-1]["end"])


def speech_frame_span(samples: np.ndarray, rate: int, speech_span: SpeechSpanFn = silero_speech_span,
                      path: str | os.PathLike | None = None, fps: int = FPS) -> FrameSpan:
    """Frames [start, end + 2) at `fps` around the detected speech, end = the last speech frame."""
    span = speech_span(samples, rate)
    if span is None:
        raise InputError("no speech detected in the audio (use --no-vad to keep everything)", path=path)
    onset_s, offset_s = span
    start = int(math.floor(onset_s * fps))
    end = int(math.floor(offset_s * fps))
    return FrameSpan(start, end + TAIL_FRAMES, fps)
