"""Voice activity: the frame span kept around the detected speech (mmface4d_stream/audio/voice.py)."""

from __future__ import annotations

import numpy as np
import pytest

from mmface4d_stream.audio.voice import FrameSpan, speech_frame_span
from mmface4d_stream.errors import InputError

SR = 16_000


def test_frame_span_rule():
    span = speech_frame_span(np.zeros(SR), SR, lambda s, r: (1.0, 2.0))
    assert (span.start, span.stop) == (30, 62)
    assert FrameSpan(30, 62).audio_slice(SR) == slice(16_000, 33_067)
    with pytest.raises(InputError, match="no speech"):
        speech_frame_span(np.zeros(SR), SR, lambda s, r: None)
