"""Mesh utilities: Loop subdivision keeps planes, counts and winding."""

from __future__ import annotations

import numpy as np

from mmface4d_stream.render.mesh_ops import loop_subdivision_matrix


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
