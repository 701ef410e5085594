"""Shared fixtures of the actor tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def one_camera_capture(tmp_path_factory):
    """8 frames of one synthetic Kinect as dataset files."""
    from mmface4d_stream.render.synth import synthesize_capture

    return synthesize_capture(tmp_path_factory.mktemp("actor_capture"), frames=8, cameras=1, seed=2, name="one",
                              write_mkv=False, progress=False)


@pytest.fixture(scope="session")
def one_camera_observed(one_camera_capture):
    """The capture's frames through the landmark stage (`ObservedFrame`s, what the fitter actors take)."""
    from mmface4d_stream.pipeline.sources import DatasetSource
    from mmface4d_stream.pipeline.stages import LandmarkStage

    stage = LandmarkStage(1)
    try:
        return [stage.process(frame_set) for frame_set in DatasetSource(one_camera_capture.sequence_prefix)]
    finally:
        stage.close()
