"""Shared fixtures: where the real sample files live, and skips when they are absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

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


@pytest.fixture(scope="session")
def astronaut_face_points() -> np.ndarray:
    """MediaPipe's 478 points on scikit-image's astronaut, placed ~0.65 m in front of a camera (metres)."""
    mp = pytest.importorskip("mediapipe")
    import skimage.data

    img = skimage.data.astronaut()
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=1) as fm:
        found = fm.process(img)
    if not found.multi_face_landmarks:
        pytest.skip("MediaPipe found no face on the astronaut image")
    p = np.array([[q.x, q.y, q.z] for q in found.multi_face_landmarks[0].landmark])
    metres_per_px = 0.15 / ((p[:, 0].max() - p[:, 0].min()) * img.shape[1])
    px = p * img.shape[1]
    centre = px[:, :2].mean(0)
    return np.stack([(px[:, 0] - centre[0]) * metres_per_px, (px[:, 1] - centre[1]) * metres_per_px,
                     0.65 + px[:, 2] * metres_per_px], 1)


@pytest.fixture(scope="module")
def single_torch_thread():
    """One torch thread for a module: small tensor ops lose to OpenMP spin-waits on a shared 2-core
    machine. Modules opt in with `pytestmark = pytest.mark.usefixtures("single_torch_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
