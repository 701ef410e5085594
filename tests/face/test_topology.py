"""MediaPipe triangle list rebuilt from FACEMESH_TESSELATION vs the upstream faces.pkl."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from mmface4d_stream.face.topology import (
    N_FACEMESH_POINTS,
    N_FACEMESH_TRIANGLES,
    _covering_triangles,
    _orient_consistently,
    mediapipe_triangles,
)


def test_shape_dtype_and_range():
    tris = mediapipe_triangles()
    assert tris.shape == (N_FACEMESH_TRIANGLES, 3) == (854, 3)
    assert tris.dtype == np.int32
    assert tris.min() == 0 and tris.max() == N_FACEMESH_POINTS - 1
    assert len(np.unique(tris)) == 468
    assert len({tuple(sorted(t)) for t in tris.tolist()}) == 854


def test_same_triangle_set_as_upstream_faces_pkl(mmface4d_sample_dir):
    with open(mmface4d_sample_dir / "faces.pkl", "rb") as fh:
        upstream = np.asarray(pickle.load(fh))
    assert upstream.shape == (854, 3)
    ours = {tuple(sorted(t)) for t in mediapipe_triangles().tolist()}
    theirs = {tuple(sorted(t)) for t in upstream.tolist()}
    assert ours == theirs


def test_winding_is_consistent_every_interior_edge_used_once_per_direction():
    all_tris = mediapipe_triangles()
    covers = _covering_triangles(all_tris)
    # Two triangles of the upstream set overlap a fan of three others (left and right nostril).
    assert sorted(sorted(all_tris[f].tolist()) for f in covers) == [[49, 64, 129], [279, 294, 358]]
    tris = np.delete(all_tris, covers, axis=0)
    directed = [(int(t[i]), int(t[(i + 1) % 3])) for t in tris for i in range(3)]
    assert len(directed) == len(set(directed)), "a directed edge appears twice: inconsistent winding"
    undirected = {}
    for a, b in directed:
        undirected.setdefault(frozenset((a, b)), []).append((a, b))
    interior = [v for v in undirected.values() if len(v) == 2]
    assert len(interior) > 1000
    assert all(v[0] == v[1][::-1] for v in interior)


def test_result_is_a_fresh_copy():
    a = mediapipe_triangles()
    a[0] = 0
    assert not np.array_equal(mediapipe_triangles()[0], a[0])


def test_orientation_rejects_missing_reference():
    tris = np.array([[0, 1, 2], [1, 3, 2]])
    with pytest.raises(ValueError, match="not a face"):
        _orient_consistently(tris, (0, 1, 3))
    fixed = _orient_consistently(tris, (0, 2, 1))
    assert fixed.tolist() == [[0, 2, 1], [1, 2, 3]]


def test_covering_triangles_are_wound_like_their_fan():
    tris = mediapipe_triangles()
    directed = {(int(t[i]), int(t[(i + 1) % 3])) for t in tris for i in range(3)}
    for f in _covering_triangles(tris):
        a, b, c = tris[f].tolist()
        # The overlapped fan faces traverse the cover's edges in the same direction.
        assert (a, b) in directed and (b, c) in directed and (c, a) in directed
        assert sum(1 for t in tris.tolist() if {a, b} <= set(t) and (a, b) in {(t[0], t[1]), (t[1], t[2]), (t[2], t[0])}) == 2
