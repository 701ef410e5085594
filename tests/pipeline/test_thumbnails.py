"""The landmark stage's preview thumbnails come at most `thumbnail_hz` per camera per second of capture."""

from __future__ import annotations

import io

import numpy as np
import pytest

from mmface4d_stream.pipeline.sources import open_source
from mmface4d_stream.pipeline.stages import THUMBNAIL_SIDE_PX, LandmarkStage


def _thumbnail_frames(capture, stage: LandmarkStage, frames: int = 10) -> tuple[list[int], list, list[int]]:
    """(frames with a thumbnail, their (jpeg, width, height), every frame's capture ns) of camera 0."""
    source = open_source([str(capture.mkv_paths[0])])
    seen, times = [], []
    for count, frame_set in enumerate(source):
        if count == frames:
            break
        crop = stage.process(frame_set).crops[0]
        assert crop.found
        times.append(frame_set.t_capture_ns)
        if crop.thumbnail_jpeg is not None:
            seen.append((count, crop.thumbnail_jpeg))
    return [k for k, _ in seen], [t for _, t in seen], times


def test_thumbnails_are_limited_to_their_rate_and_decode(short_capture):
    from PIL import Image

    stage = LandmarkStage(1, thumbnails=True, thumbnail_hz=10.0)
    try:
        frames, jpegs, times = _thumbnail_frames(short_capture, stage)
        # 30 fps capture, 10 Hz: the first frame has one, then every ~3rd; never two within 100 ms.
        assert frames[0] == 0 and 3 <= len(frames) <= 4
        gaps_ns = np.diff([times[k] for k in frames])
        assert (gaps_ns > 0.5 * 1e8).all() and (np.diff(frames) <= 4).all()
        for jpeg, width, height in jpegs:
            image = Image.open(io.BytesIO(jpeg))
            assert image.format == "JPEG" and image.size == (width, height)
            assert max(width, height) <= THUMBNAIL_SIDE_PX
        # A reset (new sequence, rewind) starts over: the next frame carries one again.
        stage.reset()
        frames_again, _, _ = _thumbnail_frames(short_capture, stage, frames=2)
        assert frames_again[0] == 0
    finally:
        stage.close()


def test_a_rate_above_the_frame_rate_gives_every_frame_one(short_capture):
    stage = LandmarkStage(1, thumbnails=True, thumbnail_hz=1000.0)
    try:
        frames, _, _ = _thumbnail_frames(short_capture, stage, frames=4)
        assert frames == [0, 1, 2, 3]
    finally:
        stage.close()
    with pytest.raises(ValueError, match="thumbnail_hz"):
        LandmarkStage(1, thumbnails=True, thumbnail_hz=0.0)
