"""Face models: the BFM loader (synthetic .mat in the Deep3DFaceRecon layout) and the MediaPipe template."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmface4d_stream.errors import InputError
from mmface4d_stream.face.models import (
    BfmModel,
    FaceModel,
    TemplateModel,
    load_landmark_mapping,
    load_vertex_mask,
    subdivide_midpoint,
)
from mmface4d_stream.fit.synthetic import synthetic_face_model, write_bfm_mat


@pytest.fixture(scope="module")
def small_model() -> FaceModel:
    return synthetic_face_model(n_vertices=800, n_id=6, n_exp=4, n_landmarks=30, seed=5)


def test_bfm_load_round_trip_converts_decimetres_to_metres(tmp_path, small_model):
    write_bfm_mat(small_model, tmp_path)
    bfm = BfmModel.load(tmp_path)
    assert bfm.name == "bfm" and bfm.n_vertices == 800 and (bfm.n_id, bfm.n_exp) == (6, 4)
    np.testing.assert_allclose(bfm.mean_shape, small_model.mean_shape, atol=1e-6)
    np.testing.assert_allclose(bfm.id_basis, small_model.id_basis, atol=1e-7)
    np.testing.assert_allclose(bfm.exp_basis, small_model.exp_basis, atol=1e-7)
    np.testing.assert_array_equal(bfm.triangles, small_model.triangles)  # 1-based in the file
    np.testing.assert_array_equal(bfm.landmark_detector_index, small_model.landmark_detector_index)
    np.testing.assert_array_equal(bfm.landmark_vertex, small_model.landmark_vertex)
    # The synthetic face is ~15 cm wide: metres, not the file's decimetres.
    extent = bfm.mean_shape.max(0) - bfm.mean_shape.min(0)
    assert 0.12 < extent[0] < 0.2
    assert bfm.texture_mean is not None and bfm.texture_mean.shape == (800, 3)
    # Loading the .mat path directly works too.
    assert BfmModel.load(tmp_path / "BFM_model_front.mat").n_vertices == 800


@pytest.mark.parametrize("key", ["meanshape", "idBase", "exBase", "tri"])
def test_bfm_missing_key_names_file_and_key(tmp_path, small_model, key):
    path = write_bfm_mat(small_model, tmp_path, drop_keys=(key,))
    with pytest.raises(InputError) as info:
        BfmModel.load(tmp_path)
    assert str(path) in str(info.value) and repr(key) in str(info.value)
    assert info.value.path == str(path)


def test_bfm_missing_file_and_mapping(tmp_path, small_model):
    with pytest.raises(InputError, match="BFM model file not found"):
        BfmModel.load(tmp_path)
    write_bfm_mat(small_model, tmp_path)
    (tmp_path / "landmark_mapping2.json").unlink()
    with pytest.raises(InputError, match="landmark mapping"):
        BfmModel.load(tmp_path)
    with pytest.raises(InputError, match="not found"):
        BfmModel.load(tmp_path, landmark_mapping=tmp_path / "nope.json")


def test_bfm_mapping_vertex_out_of_range(tmp_path, small_model):
    write_bfm_mat(small_model, tmp_path)
    (tmp_path / "landmark_mapping2.json").write_text(json.dumps({"a": [[1, 5], [2, 800]]}))
    with pytest.raises(InputError, match="vertex 800"):
        BfmModel.load(tmp_path)


def test_vertices_numpy_and_torch_agree(small_model):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=6), rng.normal(size=4)
    off = rng.normal(scale=1e-3, size=(800, 3))
    v = small_model.vertices(a, b, off)
    expected = small_model.mean_shape + small_model.id_basis @ a + small_model.exp_basis @ b + off
    np.testing.assert_allclose(v, expected, atol=1e-6)
    vt = small_model.vertices_torch(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32),
                                    torch.tensor(off, dtype=torch.float32))
    np.testing.assert_allclose(vt.numpy(), v, atol=1e-6)
    with pytest.raises(ValueError, match="6 values"):
        small_model.vertices(np.zeros(5))


def test_real_landmark_mapping_and_mask(mmface4d_sample_dir):
    det, vert = load_landmark_mapping(mmface4d_sample_dir / "landmark_mapping2.json")
    assert len(det) == len(vert) == 67
    assert (det[0], vert[0]) == (276, 31379)  # first pair of "left_eyebrow"
    assert det.max() < 468 and vert.max() < 35709
    mask = load_vertex_mask(mmface4d_sample_dir / "bfm_mask.json")
    assert mask.size > 100 and mask.max() < 35709 and np.all(np.diff(mask) > 0)


def test_dataset_meshes_are_metres_in_the_camera_frame(mmface4d_sample_dir):
    """The released reconstructions (BFM front topology) are metres in the colour camera frame,
    y down, z forward, face looking at the camera: the units and frame `BfmModel` + the fitter produce."""
    frames = np.load(mmface4d_sample_dir / "reconstruct_filt_decoded_first_last.npy")
    v = frames[0]
    assert v.shape == (35709, 3)
    extent = v.max(0) - v.min(0)
    assert 0.12 < extent[0] < 0.25 and 0.5 < v[:, 2].mean() < 1.0
    # Nose tip (vertex 8191 in the upstream mapping) is the nearest point; brows above (smaller y) the chin.
    assert v[8191, 2] < np.percentile(v[:, 2], 1)
    assert v[28426, 1] < v[35157, 1]


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
    brow = model.exp_basis[:, :, model.exp_names.index("brow_raise_left")]
    assert brow[282, 1] > 0.002 and abs(brow[52, 1]) < 1e-4


def test_template_rejects_too_few_points(astronaut_face_points):
    pts = astronaut_face_points
    valid = np.zeros(478, bool)
    valid[:200] = True
    with pytest.raises(ValueError, match="have depth"):
        TemplateModel.from_points(pts, valid)
