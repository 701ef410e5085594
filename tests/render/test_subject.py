"""Sample subject: geometry in metres, the performance rig, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from mmface4d_stream.geometry import so3_exp
from mmface4d_stream.render.mesh_ops import boundary_loops
from mmface4d_stream.render.subject import FACE_WIDTH_M, Expression, sample_subject


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
    R = so3_exp([0.0, 0.3, 0.0])
    moved = subject.vertices(rotation=[0.0, 0.3, 0.0], translation=[0.0, 0.0, 0.8])
    np.testing.assert_allclose(moved, rest @ R.T + [0.0, 0.0, 0.8], atol=1e-6)
