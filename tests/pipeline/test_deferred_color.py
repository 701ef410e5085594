"""Live MKV replay leaves the MJPEG colour undecoded until the landmark stage takes the frame set."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from mmface4d_stream.errors import InputError
from mmface4d_stream.pipeline.sources import LoopingSource, MkvSource, with_rgb
from mmface4d_stream.pipeline.stages import LandmarkStage


def test_deferred_colour_gives_the_same_crops_and_travels_small(short_capture):
    paths = [str(p) for p in short_capture.mkv_paths]
    eager = list(MkvSource(paths).frames())[:3]
    deferred = list(LoopingSource(MkvSource(paths), 2).frames(defer_color=True))[:3]
    for a, b in zip(eager, deferred):
        assert (a.frame, a.t_capture_ns) == (b.frame, b.t_capture_ns)
        for ca, cb in zip(a.cameras, b.cameras):
            assert ca.color_jpeg is None and cb.rgb is None and cb.color_jpeg[:2] == b"\xff\xd8"
            np.testing.assert_array_equal(with_rgb(cb).rgb, ca.rgb)
            np.testing.assert_array_equal(cb.depth_raw, ca.depth_raw)
    # What goes to per-camera landmark actors: JPEGs instead of full-HD RGB images.
    assert len(pickle.dumps(deferred[0])) < len(pickle.dumps(eager[0])) / 4
    single, lazy = LandmarkStage(3), LandmarkStage(3)
    try:
        for a, b in zip(eager, deferred):
            for x, y in zip(single.process(a).crops, lazy.process(b).crops):
                assert x.found and y.found and x.offset_px == y.offset_px
                np.testing.assert_array_equal(x.landmarks_px, y.landmarks_px)
                np.testing.assert_array_equal(x.depth_mm, y.depth_mm)
    finally:
        single.close()
        lazy.close()


def test_an_undecodable_deferred_frame_is_an_input_error(short_capture):
    frame_set = next(MkvSource([str(short_capture.mkv_paths[0])]).frames(defer_color=True))
    camera = frame_set.cameras[0]
    camera.color_jpeg = b"\xff\xd8 not a jpeg"
    with pytest.raises(InputError, match="does not decode|did not decode"):
        with_rgb(camera)
    decoded = next(iter(MkvSource([str(short_capture.mkv_paths[0])]))).cameras[0]
    assert with_rgb(decoded) is decoded  # already decoded: nothing to do


def test_the_live_source_actor_sends_jpegs_only_to_landmark_actors_elsewhere(short_capture, tmp_path):
    from actors.front_actor import FrontActor
    from actors.source_actor import SourceActor
    from mmface4d_stream.pipeline.stage_config import LandmarkStageConfig, SourceConfig

    paths = [str(p) for p in short_capture.mkv_paths]
    config = SourceConfig(pace=False)

    def first(actor) -> list:
        actor.start(0)
        try:
            frame_set = actor.read(0)  # (live: waits for the reading thread's first frame set)
            assert frame_set is not None and frame_set.frame == 0
            return frame_set.cameras
        finally:
            actor.close()

    # Per-camera landmark actors decode what they take; offline and recording sources decode.
    assert all(c.rgb is None and c.color_jpeg for c in first(SourceActor(paths, config, live=True)))
    assert all(c.rgb is not None for c in first(SourceActor(paths, config, live=False)))
    recorded = first(SourceActor(paths, config, live=True, record_dir=str(tmp_path / "rec")))
    assert all(c.rgb is not None for c in recorded)
    # Landmarks in the source's process: its reading thread decodes (measured cheaper there).
    front = FrontActor(paths, config, live=True)
    front.open_landmarks(3, LandmarkStageConfig())
    assert all(c.rgb is not None for c in first(front))
