"""A short synthetic 3-camera capture, synthesized once per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def short_capture(tmp_path_factory):
    from mmface4d_stream.render.synth import synthesize_capture

    return synthesize_capture(tmp_path_factory.mktemp("capture"), frames=10, cameras=3, seed=3, name="cap",
                              write_mkv=True, progress=False)
