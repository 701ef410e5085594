"""Regions, metrics, the streaming basis and sequence discovery."""

from __future__ import annotations

import numpy as np
import pytest

from mmface4d_stream.animate.data import discover_sequences, split_by_subject
from mmface4d_stream.animate.metrics import MetricAccumulator, lip_vertex_error, upper_face_dynamics_deviation
from mmface4d_stream.animate.pca import FrequentDirections
from mmface4d_stream.animate.regions import anchors_for, face_regions
from mmface4d_stream.errors import InputError


def test_regions_of_the_synthetic_face():
    from mmface4d_stream.render.subject import sample_subject

    subject = sample_subject(0)
    face = subject.vertices()[: subject.n_face_vertices]
    regions = face_regions(face, anchors_for(len(face)))
    lips, upper = set(regions.lips.tolist()), set(regions.upper_face.tolist())
    assert {13, 14, 61, 291, 0, 17} <= lips  # lip centres and corners (MediaPipe ids)
    assert {10, 151, 105, 334} <= upper  # forehead and brows
    assert not ({152, 13, 14, 1} & upper)  # chin, lips, nose tip
    assert not lips & upper


def test_regions_of_the_real_bfm_sample(mmface4d_sample_dir):
    frame = np.load(mmface4d_sample_dir / "reconstruct_filt_decoded_first_last.npy")[0]
    regions = face_regions(frame, anchors_for(len(frame), mmface4d_sample_dir / "landmark_mapping2.json"))
    assert {8227, 8228, 5649, 10925} <= set(regions.lips.tolist())  # inner lip centre, mouth corners
    assert 8191 not in regions.lips  # the nose tip
    assert 50 < len(regions.lips) < 3000 and 1000 < len(regions.upper_face) < 30000


def test_bfm_without_mapping_asks_for_it():
    with pytest.raises(InputError, match="--landmark-mapping"):
        anchors_for(35709)


def test_lve_and_fdd_on_known_values():
    true = np.zeros((4, 5, 3))
    pred = np.zeros((4, 5, 3))
    pred[:, 0, 0] = 0.002  # 2 mm on lip vertex 0
    pred[2, 1, 1] = 0.005  # 5 mm on lip vertex 1 in frame 2
    np.testing.assert_allclose(lip_vertex_error(pred, true, np.array([0, 1])), [2, 2, 5, 2])
    # Upper vertex 3 moves 0/2/0/2 mm in truth, not at all in the prediction: std 1 mm.
    true[[1, 3], 3, 2] = 0.002
    neutral = np.zeros((5, 3))
    assert upper_face_dynamics_deviation(pred, true, neutral, np.array([3])) == pytest.approx(1.0)
    assert upper_face_dynamics_deviation(true, true, neutral, np.array([3, 4])) == 0.0
    acc = MetricAccumulator(np.array([0, 1]), np.array([3]))
    acc.add(pred, true, neutral)
    result = acc.result()
    assert result.lve_mm == pytest.approx(2.75) and result.fdd_mm == pytest.approx(1.0) and result.frames == 4


def test_frequent_directions_recovers_a_low_rank_subspace():
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((300, 4)))[0].T  # 4 orthonormal directions in R^300
    rows = (rng.standard_normal((2000, 4)) * [5, 3, 2, 1]) @ basis + 1e-4 * rng.standard_normal((2000, 300))
    sketch = FrequentDirections(300, 4)
    for chunk in np.array_split(rows, 37):
        sketch.push(chunk)
    found, _ = sketch.components(4)
    assert found.shape == (4, 300)
    # Every true direction lies in the found subspace.
    np.testing.assert_allclose(np.linalg.norm(found @ basis.T, axis=0), 1.0, atol=1e-3)


def test_discovery_pairs_wavs_with_mesh_triplets_and_splits_by_subject(synthetic_corpus, tmp_path):
    sequences = discover_sequences([synthetic_corpus[0]])
    assert len(sequences) == 20
    assert {s.subject for s in sequences} == {f"subject{i:02d}" for i in range(4)}
    assert all(s.n_frames == 120 and s.mesh_prefix.name.endswith("_mesh") for s in sequences)
    train, val = split_by_subject(sequences, 0.25, seed=1)
    assert len(val) == 5 and not {s.subject for s in train} & {s.subject for s in val}
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no sequence"):
        discover_sequences([tmp_path / "empty"])


def test_discovery_skips_depth_videos_and_finds_the_reconstruction(mmface4d_sample_dir):
    (seq,) = discover_sequences([mmface4d_sample_dir])
    assert seq.mesh_prefix.name == "reconstruct_filt" and seq.n_vertices == 35709 and seq.n_frames == 67
    assert seq.subject == "mmface4d_000337"
