"""Shared fixtures: where the real sample files live, and skips when they are absent."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_SAMPLES = REPO_ROOT.parent / "shared" / "samples"


@pytest.fixture(scope="session")
def mmface4d_sample_dir() -> Path:
    """`../shared/samples/mmface4d_000337`: a real MMFace4D sequence (skips when absent)."""
    path = SHARED_SAMPLES / "mmface4d_000337"
    if not path.is_dir():
        pytest.skip(f"real MMFace4D sample not found at {path} (CI provides ../shared/samples)")
    return path


@pytest.fixture(scope="session")
def k4a_sample_dir() -> Path:
    """`../shared/samples/k4a_recording`: a real Azure Kinect MKV and its calibration (skips when absent)."""
    path = SHARED_SAMPLES / "k4a_recording"
    if not path.is_dir():
        pytest.skip(f"real Azure Kinect sample not found at {path} (CI provides ../shared/samples)")
    return path
