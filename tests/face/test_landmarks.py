"""FaceLandmarker on the astronaut portrait pasted small into 1080p frames."""

from __future__ import annotations

import numpy as np
import pytest

mp = pytest.importorskip("mediapipe")
from skimage import data, transform  # noqa: E402

from mmface4d_stream.face.landmarks import (  # noqa: E402
    N_LANDMARKS,
    FaceLandmarker,
    LandmarkerConfig,
    crop_padded,
    nearest_depth_blob,
    square_roi,
)
from mmface4d_stream.face.topology import mediapipe_triangles  # noqa: E402

FRAME_H, FRAME_W = 1080, 1920
# Part of the 512 px astronaut portrait holding the face (landmark extent ~92 px).
SRC_Y0, SRC_X0, SRC_SIDE = 20, 90, 280


@pytest.fixture(scope="module")
def astronaut_reference():
    """FaceMesh on the unscaled portrait: (478, 3) points, x/y in 512-image pixel-centre coords."""
    image = data.astronaut()
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True) as fm:
        lm = fm.process(image).multi_face_landmarks[0].landmark
    xyz = np.array([(p.x * 512 - 0.5, p.y * 512 - 0.5, p.z * 512) for p in lm])
    return image, xyz


@pytest.fixture(scope="module")
def landmarker():
    with FaceLandmarker() as lm:
        yield lm


def paste_face(image, scale, x, y, background=90):
    """A 1080p frame with the portrait's face region scaled by `scale` pasted at (x, y)."""
    src = image[SRC_Y0 : SRC_Y0 + SRC_SIDE, SRC_X0 : SRC_X0 + SRC_SIDE]
    patch = (transform.rescale(src, scale, channel_axis=2, anti_aliasing=True) * 255).round().astype(np.uint8)
    frame = np.full((FRAME_H, FRAME_W, 3), background, np.uint8)
    frame[y : y + patch.shape[0], x : x + patch.shape[1]] = patch
    return frame


def expected_points(reference_xyz, scale, x, y):
    """Reference landmarks mapped into the frame (pixel centres map as (p + 0.5) * s - 0.5)."""
    p = reference_xyz[:, :2] - [SRC_X0, SRC_Y0]
    return (p + 0.5) * scale - 0.5 + [x, y]


def median_error(points, expected):
    return float(np.median(np.linalg.norm(points - expected, axis=1)))


SMALL_FACE_POSITIONS = [(121, 448), (30, 281), (654, 219), (7, 64), (714, 336), (1300, 20)]


def test_full_frame_facemesh_misses_small_faces_that_roi_strategy_finds(astronaut_reference, landmarker):
    image, ref = astronaut_reference
    scale = 2.0  # face ~185 px wide, as in MMFace4D's 1080p captures
    full_frame_found = 0
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True) as full_frame:
        for x, y in SMALL_FACE_POSITIONS:
            frame = paste_face(image, scale, x, y)
            full_frame_found += full_frame.process(frame).multi_face_landmarks is not None

            landmarker.reset()
            result = landmarker.process(frame)
            assert result.found and result.roi_source == "detector"
            assert result.points_px.shape == (N_LANDMARKS, 2) and result.points_px.dtype == np.float32
            assert result.z.shape == (N_LANDMARKS,) and result.z.dtype == np.float32
            face_width = np.ptp(result.points_px[:, 0])
            assert 160 < face_width < 210
            # Within 1.5 % of the face width of FaceMesh on the full-resolution portrait.
            assert median_error(result.points_px, expected_points(ref, scale, x, y)) < 0.015 * face_width
            assert 0.5 < result.confidence <= 1.0
            x0, y0, x1, y1 = result.roi
            assert x0 <= result.points_px[:, 0].min() and result.points_px[:, 0].max() <= x1
            assert y0 <= result.points_px[:, 1].min() and result.points_px[:, 1].max() <= y1
            # Relative depth: the nose tip (1) is nearer the camera than the face's outline (234, 454).
            assert result.z[1] < result.z[234] and result.z[1] < result.z[454]
    # FaceMesh's short-range detector sees the 1080p frame at 128 px: a ~185 px face is mostly missed.
    assert full_frame_found <= 1


def test_roi_strategy_works_across_face_sizes(astronaut_reference, landmarker):
    image, ref = astronaut_reference
    for scale, (x, y) in [(1.5, (900, 500)), (2.7, (200, 150)), (3.4, (900, 100))]:
        landmarker.reset()
        result = landmarker.process(paste_face(image, scale, x, y))
        assert result.found
        face_width = np.ptp(result.points_px[:, 0])
        assert median_error(result.points_px, expected_points(ref, scale, x, y)) < 0.015 * face_width


def test_tracking_follows_a_moving_face(astronaut_reference, landmarker):
    image, ref = astronaut_reference
    scale = 2.0
    landmarker.reset()
    sources = []
    for i in range(12):
        x, y = 150 + 70 * i, 120 + 20 * i
        result = landmarker.process(paste_face(image, scale, x, y))
        assert result.found, f"lost at frame {i}"
        sources.append(result.roi_source)
        assert 0.5 < result.confidence <= 1.0  # detector score, then the landmark model's presence
        face_width = np.ptp(result.points_px[:, 0])
        assert median_error(result.points_px, expected_points(ref, scale, x, y)) < 0.015 * face_width
    assert sources[0] == "detector"
    assert sources[1:] == ["tracked"] * 11


def test_blank_frame_is_not_found_and_face_is_redetected(astronaut_reference, landmarker):
    image, ref = astronaut_reference
    landmarker.reset()
    blank = np.full((FRAME_H, FRAME_W, 3), 90, np.uint8)
    result = landmarker.process(blank)
    assert not result.found and result.roi_source == "none"
    assert np.isnan(result.points_px).all() and np.isnan(result.z).all()
    assert result.confidence == 0.0 and result.roi == (0, 0, FRAME_W, FRAME_H)

    assert landmarker.process(paste_face(image, 2.0, 300, 300)).found
    lost = landmarker.process(blank)  # tracked crop fails, detection fails: a gap, not a guess
    assert not lost.found and np.isnan(lost.points_px).all()
    # The face comes back far from where it was lost.
    again = landmarker.process(paste_face(image, 2.0, 1300, 500))
    assert again.found and again.roi_source == "detector"
    assert median_error(again.points_px, expected_points(ref, 2.0, 1300, 500)) < 3.0


def test_depth_blob_gives_the_first_roi(astronaut_reference, landmarker):
    image, ref = astronaut_reference
    x, y = 1200, 350
    frame = paste_face(image, 2.0, x, y)
    depth = np.full((FRAME_H, FRAME_W), 2500, np.uint16)
    depth[:, :200] = 0  # holes
    depth[y + 40 : y + 520, x + 100 : x + 460] = 750  # head and shoulders, nearest object
    depth[y + 200, x + 200] = 50  # a flying pixel below depth_min_mm is ignored
    landmarker.reset()
    result = landmarker.process(frame, depth_mm=depth)
    assert result.found and result.roi_source == "depth"
    assert median_error(result.points_px, expected_points(ref, 2.0, x, y)) < 3.0


def test_nearest_depth_blob_and_crop_helpers():
    depth = np.zeros((400, 600), np.uint16)
    depth[:] = 2000
    depth[100:200, 300:380] = 900
    depth[10:14, 10:14] = 800  # too small to be a blob
    assert nearest_depth_blob(depth, min_pixels=400) == (300, 100, 380, 200)
    assert nearest_depth_blob(np.zeros((400, 600), np.uint16)) is None

    assert square_roi((10.0, 20.0), 8) == (6, 16, 14, 24)
    image = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)
    crop = crop_padded(image, (-2, -1, 3, 3))
    assert crop.shape == (4, 5, 3)
    assert (crop[0] == 0).all() and (crop[:, :2] == 0).all()
    np.testing.assert_array_equal(crop[1:, 2:], image[0:3, 0:3])


def test_input_checks(landmarker):
    with pytest.raises(ValueError, match="uint8"):
        landmarker.process(np.zeros((100, 100, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        landmarker.process(np.zeros((100, 100), np.uint8))
    with pytest.raises(ValueError, match="depth_mm"):
        landmarker.process(np.zeros((100, 100, 3), np.uint8), depth_mm=np.zeros((50, 100), np.uint16))
    with pytest.raises(ValueError, match="crop scales"):
        LandmarkerConfig(crop_scale_tracked=0.5)


def test_triangles_face_the_camera_on_a_real_facemesh(astronaut_reference):
    _, xyz = astronaut_reference
    tris = mediapipe_triangles()
    a, b, c = xyz[tris[:, 0]], xyz[tris[:, 1]], xyz[tris[:, 2]]
    normal_z = np.cross(b - a, c - a)[:, 2]
    # Image frame: x right, y down, z away from the camera; outward normals have negative z.
    assert (normal_z < 0).mean() > 0.9


def test_periodic_redetection(astronaut_reference):
    image, _ = astronaut_reference
    with FaceLandmarker(LandmarkerConfig(redetect_every=3)) as landmarker:
        sources = [landmarker.process(paste_face(image, 2.0, 300 + 20 * i, 200)).roi_source for i in range(8)]
    assert sources == ["detector", "tracked", "tracked", "tracked"] * 2


def test_track_uses_the_tracked_region_only_and_gives_up_cleanly(astronaut_reference, landmarker):
    image, ref = astronaut_reference
    landmarker.reset()
    face = paste_face(image, 2.0, 400, 300)
    assert landmarker.track(face) is None  # nothing tracked yet: no detection is attempted
    assert landmarker.process(face).roi_source == "detector"
    moved = paste_face(image, 2.0, 430, 310)
    tracked = landmarker.track(moved)
    assert tracked is not None and tracked.roi_source == "tracked"
    face_width = np.ptp(tracked.points_px[:, 0])
    assert median_error(tracked.points_px, expected_points(ref, 2.0, 430, 310)) < 0.015 * face_width
    # The face jumps out of the tracked region: track() gives up and process() finds it anew.
    far = paste_face(image, 2.0, 1300, 500)
    assert landmarker.track(far) is None
    again = landmarker.process(far)
    assert again.found and again.roi_source == "detector"
