"""The MediaPipe template model: midpoint subdivision, the template built from FaceMesh points."""

from __future__ import annotations

import numpy as np
import pytest

from mmface4d_stream.face.template_model import TemplateModel, subdivide_midpoint


def test_subdivide_midpoint_keeps_original_indices():
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], float)
    new_v, new_t, edges = subdivide_midpoint(verts, np.array([[0, 1, 2]]))
    assert new_v.shape == (6, 3) and new_t.shape == (4, 3) and len(edges) == 3
    np.testing.assert_array_equal(new_v[:3], verts)
    normals = np.cross(new_v[new_t[:, 1]] - new_v[new_t[:, 0]], new_v[new_t[:, 2]] - new_v[new_t[:, 0]])
    assert np.all(normals[:, 2] > 0)  # winding kept
    assert np.isclose(np.linalg.norm(normals, axis=1).sum() / 2, 0.5)  # same total area


def test_template_from_mediapipe_points(astronaut_face_points):
    pts = astronaut_face_points
    valid = np.ones(478, bool)
    valid[[1, 2, 50, 280]] = False  # filled by harmonic interpolation
    model, r, t = TemplateModel.from_points(pts, valid, subdivisions=2)
    assert model.name == "template" and model.n_vertices == 6996 and len(model.triangles) == 854 * 16
    np.testing.assert_array_equal(model.landmark_vertex, np.arange(468))
    assert (model.n_id, model.n_exp) == (3, 12) and len(model.exp_names) == 12
    # The pose puts the measured points back where they were.
    back = model.mean_shape[:468].astype(np.float64) @ r.T + t
    err = np.linalg.norm(back - pts[:468], axis=1)
    assert err[valid[:468]].max() < 1e-5
    assert err[~valid[:468]].max() < 0.02  # filled points land near the true ones
    # Model frame: x towards the subject's left eye, y up (forehead above chin), normals out (+z).
    v = model.mean_shape
    assert v[263, 0] > v[33, 0] and v[10, 1] > v[152, 1]
    tri = model.triangles
    n = np.cross(v[tri[:, 1]] - v[tri[:, 0]], v[tri[:, 2]] - v[tri[:, 0]])
    assert (n[:, 2] > 0).mean() > 0.9
    # Expression modes are smooth, localized and of centimetre scale.
    jaw = model.exp_basis[:, :, model.exp_names.index("jaw_open")]
    assert np.linalg.norm(jaw[152]) > 0.005 and np.linalg.norm(jaw[10]) < 1e-4
    # The jaw carries the lower lip and leaves the upper lip still (the lip opening is a hole in
    # the mesh, so the lips' weights do not blend across it).
    upper_lip, lower_lip = [0, 13, 37, 82, 267, 312], [17, 14, 84, 87, 314, 317]
    assert np.linalg.norm(jaw[upper_lip], axis=1).max() < 1e-4
    assert np.linalg.norm(jaw[lower_lip], axis=1).min() > 0.5 * np.linalg.norm(jaw[152])
    brow = model.exp_basis[:, :, model.exp_names.index("brow_raise_left")]
    assert brow[282, 1] > 0.002 and abs(brow[52, 1]) < 1e-4


def test_template_rejects_too_few_points(astronaut_face_points):
    pts = astronaut_face_points
    valid = np.zeros(478, bool)
    valid[:200] = True
    with pytest.raises(ValueError, match="have depth"):
        TemplateModel.from_points(pts, valid)
