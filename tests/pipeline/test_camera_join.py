"""One landmark stage per camera gives the same observations as one stage over every camera."""

from __future__ import annotations

import numpy as np
import pytest

from mmface4d_stream.pipeline.camera_join import join_observed
from mmface4d_stream.pipeline.sources import open_source
from mmface4d_stream.pipeline.stages import LandmarkStage


def test_per_camera_stages_joined_equal_the_single_stage(short_capture):
    source = open_source([str(p) for p in short_capture.mkv_paths])
    single = LandmarkStage(3)
    per_camera = [LandmarkStage(3, cameras=[k]) for k in range(3)]
    try:
        for count, frame_set in enumerate(source):
            if count == 3:
                break
            whole = single.process(frame_set)
            parts = [stage.process(frame_set) for stage in per_camera]
            assert [[c is not None for c in p.crops] for p in parts] == [[True, False, False], [False, True, False],
                                                                       [False, False, True]]
            joined = join_observed(parts[::-1])  # in any order
            assert (joined.seq, joined.frame, joined.t_source_ns) == (whole.seq, whole.frame, whole.t_source_ns)
            for a, b in zip(whole.crops, joined.crops):
                assert a.found and b.found and a.offset_px == b.offset_px
                np.testing.assert_array_equal(a.landmarks_px, b.landmarks_px)
                np.testing.assert_array_equal(a.depth_mm, b.depth_mm)
            # The frame's landmark time is the slowest camera's; each camera's is kept beside it.
            assert joined.timings_ms["landmarks"] == max(p.timings_ms["landmarks"] for p in parts)
            assert {f"landmarks.{k}" for k in range(3)} <= set(joined.timings_ms)
    finally:
        single.close()
        for stage in per_camera:
            stage.close()


def test_join_rejects_parts_of_different_frames_and_bad_camera_positions():
    from mmface4d_stream.frame_records import ObservedFrame

    a = ObservedFrame("s", 1, 0, [None, None])
    b = ObservedFrame("s", 2, 0, [None, None])
    with pytest.raises(ValueError, match="cannot join"):
        join_observed([a, b])
    with pytest.raises(ValueError, match="positions"):
        LandmarkStage(2, cameras=[2])
