"""Sample subject: geometry in metres, the performance rig, Loop subdivision, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from mmface4d_stream.render.subject import (
    FACE_WIDTH_M,
    Expression,
    boundary_loops,
    generate_performance,
    loop_subdivision_matrix,
    rotation_matrix,
    sample_subject,
    speech_audio,
)


@pytest.fixture(scope="module")
def subject():
    return sample_subject(2)


def test_subject_geometry(subject):
    v = subject.rest_vertices
    n_face = subject.n_face_vertices
    assert 5000 < n_face < 10000
    assert subject.faces.max() < len(v) and subject.face_faces.max() < n_face
    # Vertices 0..467 are MediaPipe's points: 234 and 454 span the face's width (slightly less after smoothing).
    width = np.linalg.norm(v[234] - v[454])
    assert 0.9 * FACE_WIDTH_M < width <= FACE_WIDTH_M * 1.001
    # The nose tip is the face's most forward point, ~10 cm in front of the head's centre.
    assert v[1, 2] == pytest.approx(-0.10, abs=0.006)
    assert v[:n_face, 2].min() >= v[1, 2] - 0.004
    # Face height (forehead 10 to chin 152): human-sized.
    assert 0.13 < np.linalg.norm(v[10] - v[152]) < 0.2
    # The face surface has one outer boundary and the mouth opening (eyes are closed by fans).
    assert len(boundary_loops(subject.face_faces)) == 2
    assert subject.uv.shape == (len(v), 2) and np.all((subject.uv >= 0) & (subject.uv <= 1))
    assert subject.texture.dtype == np.uint8 and subject.texture.shape[2] == 3


def test_expressions_move_the_right_parts(subject):
    rest = subject.vertices()
    np.testing.assert_allclose(rest, subject.rest_vertices, atol=1e-6)
    jaw = subject.vertices(Expression(jaw=1.0))
    chin, forehead = 152, 10
    assert 0.012 < np.linalg.norm(jaw[chin] - rest[chin]) < 0.04
    assert np.linalg.norm(jaw[forehead] - rest[forehead]) < 1e-6
    # Lips part: the inner lips (13 upper, 14 lower) separate by more than a centimetre.
    assert jaw[14, 1] - jaw[13, 1] > rest[14, 1] - rest[13, 1] + 0.01
    blink = subject.vertices(Expression(blink=1.0))
    for upper, lower in ((159, 145), (386, 374)):
        assert abs(blink[upper, 1] - blink[lower, 1]) < 0.0015 < abs(rest[upper, 1] - rest[lower, 1])
    smile = subject.vertices(Expression(smile=1.0))
    assert smile[61, 1] < rest[61, 1] - 0.003 and smile[291, 1] < rest[291, 1] - 0.003
    brow = subject.vertices(Expression(brow=1.0))
    assert brow[105, 1] < rest[105, 1] - 0.003 and abs(brow[159, 1] - rest[159, 1]) < 1.5e-3
    R = rotation_matrix([0.0, 0.3, 0.0])
    moved = subject.vertices(rotation=[0.0, 0.3, 0.0], translation=[0.0, 0.0, 0.8])
    np.testing.assert_allclose(moved, rest @ R.T + [0.0, 0.0, 0.8], atol=1e-6)


def test_performance_is_deterministic_and_speech_like():
    a = generate_performance(150, seed=3)
    b = generate_performance(150, seed=3)
    c = generate_performance(150, seed=4)
    for name in ("jaw", "pucker", "smile", "blink", "brow", "rotation", "translation"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.jaw, c.jaw)
    assert a.jaw.max() > 0.3 and (a.jaw < 0.05).any()
    assert np.abs(np.degrees(a.rotation)).max() < 12 and np.abs(a.translation).max() < 0.02
    # Frame-to-frame motion is smooth (no jumps above ~1 degree or 2 mm at 30 fps).
    assert np.abs(np.diff(np.degrees(a.rotation), axis=0)).max() < 1.0
    assert np.abs(np.diff(a.translation, axis=0)).max() < 0.002
    audio = speech_audio(a, 16000)
    assert audio.dtype == np.float32 and len(audio) == 5 * 16000
    assert np.array_equal(audio, speech_audio(b, 16000))
    # Loud while the jaw moves, quiet in pauses.
    frames = np.abs(audio[: 150 * 533].reshape(150, 533)).mean(1)
    assert np.corrcoef(frames, a.jaw)[0, 1] > 0.5


def test_loop_subdivision_keeps_planes_and_counts():
    # A planar square of 2 triangles: subdivided points stay in the plane; boundary rule keeps corners.
    v = np.array([[0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]], dtype=float)
    f = np.array([[0, 1, 2], [0, 2, 3]])
    S, f2 = loop_subdivision_matrix(f, 4)
    assert S.shape == (9, 4) and f2.shape == (8, 3)
    v2 = S @ v
    np.testing.assert_allclose(v2[:, 2], 1.0)
    np.testing.assert_allclose(np.asarray(S.sum(axis=1)).ravel(), 1.0)
    np.testing.assert_allclose(v2[:4], v[:4] * [0.75, 0.75, 1] + 0.125 * (v[[1, 0, 1, 0]] + v[[3, 2, 3, 2]]) * [1, 1, 0])
    # Winding preserved: all normals still +z or all -z, as before.
    n = np.cross(v2[f2[:, 1]] - v2[f2[:, 0]], v2[f2[:, 2]] - v2[f2[:, 0]])[:, 2]
    assert np.all(n > 0)
