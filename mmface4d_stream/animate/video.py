"""Put a waveform into a rendered mp4: the video stream is copied, the audio encoded as AAC."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["mux_audio"]

AAC_BITRATE = 96_000


def mux_audio(video: str | os.PathLike, samples: np.ndarray, rate: int) -> Path:
    """Replace `video` (an mp4) by a copy of its video stream with mono float32 `samples` (S,) at
    `rate` Hz as its audio track; atomic (a temporary file renamed over it)."""
    import av

    video = Path(video)
    tmp = video.with_name(f".{video.name}.muxing.mp4")
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    with av.open(str(video)) as src, av.open(str(tmp), "w") as dst:
        vin = src.streams.video[0]
        vout = dst.add_stream_from_template(vin)
        aout = dst.add_stream("aac", rate=int(rate), layout="mono")
        aout.bit_rate = AAC_BITRATE
        for packet in src.demux(vin):
            if packet.dts is None:
                continue
            packet.stream = vout
            dst.mux(packet)
        frame_size = 1024
        for start in range(0, len(samples), frame_size):
            chunk = samples[start:start + frame_size]
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
            frame.sample_rate = int(rate)
            frame.pts = start
            for packet in aout.encode(frame):
                dst.mux(packet)
        for packet in aout.encode(None):
            dst.mux(packet)
    os.replace(tmp, video)
    return video
