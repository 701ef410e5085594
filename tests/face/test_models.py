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
    load_landmark_mapping,
    load_vertex_mask,
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
