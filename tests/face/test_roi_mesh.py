"""The landmark model on a known region (`roi_mesh`): the region rule and the model's output."""

from __future__ import annotations

import math

import numpy as np
import pytest

mp = pytest.importorskip("mediapipe")
from skimage import data  # noqa: E402

from mmface4d_stream.face.landmarks import N_LANDMARKS  # noqa: E402
from mmface4d_stream.face.roi_mesh import (  # noqa: E402
    EYE_CORNERS,
    REGION_SCALE,
    FaceRegion,
    RoiFaceMesh,
    region_from_landmarks,
)


def turned(points, angle, center):
    """`points` (N, 2) turned by `angle` radians about `center`, as seen in an image (y down):
    a positive angle lifts the +x side (counter-clockwise on screen)."""
    c, s = math.cos(angle), math.sin(angle)
    d = points - center
    return center + np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]], axis=1)


def test_region_from_landmarks_box_scale_and_eye_line():
    rng = np.random.default_rng(0)
    points = rng.uniform([100, 200], [180, 300], size=(N_LANDMARKS, 2))  # box 80 x 100 px
    points[EYE_CORNERS[0]] = (120, 230)
    points[EYE_CORNERS[1]] = (160, 230)  # a level eye line
    lo, hi = points.min(0), points.max(0)
    region = region_from_landmarks(points)
    assert region.center_px == pytest.approx(((lo + hi) / 2).tolist())
    assert region.side_px == pytest.approx(REGION_SCALE * (hi - lo).max())
    assert region.rotation_rad == pytest.approx(0.0, abs=1e-12)
    # A head turned 20 degrees counter-clockwise on screen is turned back by -20 degrees.
    tilted = turned(points, math.radians(20), np.array([140.0, 250.0]))
    assert region_from_landmarks(tilted).rotation_rad == pytest.approx(-math.radians(20), abs=1e-9)
    # Upside down stays in [-pi, pi).
    flipped = turned(points, math.pi, np.array([140.0, 250.0]))
    assert -math.pi <= region_from_landmarks(flipped).rotation_rad < math.pi


@pytest.fixture(scope="module")
def astronaut():
    """The astronaut portrait and FaceMesh's (478, 2) points on it (pixel centres at integers)."""
    image = data.astronaut()
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True) as fm:
        lm = fm.process(image).multi_face_landmarks[0].landmark
    return image, np.array([(p.x * 512 - 0.5, p.y * 512 - 0.5) for p in lm])


def test_landmark_model_on_a_region_matches_the_full_graph(astronaut):
    image, reference = astronaut
    region = region_from_landmarks(reference)
    with RoiFaceMesh() as mesh:
        # On the whole image, and on a crop of it (region given in the whole image's pixels).
        whole = mesh.process(image, region)
        x0, y0 = 100, 40
        crop = np.ascontiguousarray(image[y0:y0 + 300, x0:x0 + 300])
        cropped = mesh.process(crop, region, (x0, y0))
        assert whole is not None and cropped is not None
        assert 0.5 < whole.presence <= 1.0
        face_width = np.ptp(reference[:, 0])
        pts_whole = whole.xyz[:, :2] * 512 - 0.5
        pts_crop = cropped.xyz[:, :2] * 300 - 0.5 + (x0, y0)
        assert whole.xyz.shape == (N_LANDMARKS, 3)
        assert np.median(np.linalg.norm(pts_whole - reference, axis=1)) < 0.02 * face_width
        assert np.median(np.linalg.norm(pts_crop - pts_whole, axis=1)) < 0.01 * face_width
        # A region without a face: the presence score rejects it.
        blank = np.full((300, 300, 3), 90, np.uint8)
        assert mesh.process(blank, FaceRegion((150.0, 150.0), 200.0, 0.0)) is None
    with pytest.raises(ValueError, match="closed"):
        mesh.process(image, region)
