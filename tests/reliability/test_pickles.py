"""Item 1: crafted pickles beside a sequence or given as faces are refused, never run."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from mmface4d_stream.cli import main
from mmface4d_stream.errors import InputError
from mmface4d_stream.formats.faces import load_faces
from mmface4d_stream.formats.intrinsics import IntrinsicsJson
from mmface4d_stream.formats.landmarks import read_landmarks_pkl, write_landmarks_pkl
from mmface4d_stream.formats.safe_pickle import load_data_pickle


class _Payload:
    """Unpickling this calls os.mkdir(marker): proof that code from the file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _write_payload(path, marker):
    path.write_bytes(pickle.dumps(_Payload(marker), protocol=4))


def test_landmark_payload_is_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"
    _write_payload(tmp_path / "evil_0.pkl", marker)
    with pytest.raises(InputError, match=r"evil_0\.pkl: refused to load as a landmark pickle: it names posix\.mkdir"):
        read_landmarks_pkl(tmp_path / "evil_0.pkl")
    assert not marker.exists()


def test_faces_payload_is_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"
    _write_payload(tmp_path / "faces.pkl", marker)
    with pytest.raises(InputError, match="faces.pkl: refused"):
        load_faces(tmp_path / "faces.pkl", 10)
    assert not marker.exists()


def test_payload_inside_an_array_container_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "x.pkl").write_bytes(pickle.dumps([np.zeros((2, 98, 2)), _Payload(marker)]))
    with pytest.raises(InputError, match="refused"):
        load_data_pickle(tmp_path / "x.pkl", "landmark pickle")
    assert not marker.exists()


def test_dataset_pickles_still_load(mmface4d_sample_dir, tmp_path):
    landmarks = read_landmarks_pkl(mmface4d_sample_dir / "000337_0.pkl")
    assert landmarks.dtype == np.float64 and landmarks.shape[1:] == (98, 2) and landmarks.shape[0] > 0
    bfm = load_faces(mmface4d_sample_dir / "bfm_faces.pkl", 35709)  # a trimesh TrackedArray pickle
    assert bfm.shape == (70789, 3)
    mediapipe = load_faces(mmface4d_sample_dir / "faces.pkl", 468)  # a list of tuples
    assert mediapipe.shape == (854, 3)
    # Our own writer's output (protocol 4, plain ndarray) and a mapping holding faces.
    write_landmarks_pkl(tmp_path / "l.pkl", landmarks[:3])
    np.testing.assert_array_equal(read_landmarks_pkl(tmp_path / "l.pkl"), landmarks[:3])
    (tmp_path / "m.pkl").write_bytes(pickle.dumps({"faces": mediapipe}, protocol=2))
    np.testing.assert_array_equal(load_faces(tmp_path / "m.pkl", 468), mediapipe)


def test_info_on_a_sequence_with_a_crafted_pickle(mmface4d_sample_dir, tmp_path, capsys):
    """`mmface4d info DIR/NAME` counts landmark frames: the payload is refused with one line, exit 2."""
    (tmp_path / "seq_0.json").write_bytes((mmface4d_sample_dir / "000337_0.json").read_bytes())
    IntrinsicsJson.load(tmp_path / "seq_0.json")
    marker = tmp_path / "pwned"
    _write_payload(tmp_path / "seq_0.pkl", marker)
    assert main(["info", str(tmp_path / "seq")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seq_0.pkl: refused to load as a landmark pickle" in err[0]
    assert not marker.exists()


def test_frames_are_counted_from_opcodes_without_unpickling(mmface4d_sample_dir, tmp_path, monkeypatch):
    from mmface4d_stream.formats import landmarks as module
    from mmface4d_stream.formats.safe_pickle import pickled_array_shape

    assert pickled_array_shape(mmface4d_sample_dir / "000337_0.pkl") == (67, 98, 2)
    assert pickled_array_shape(mmface4d_sample_dir / "bfm_faces.pkl") == (70789, 3)  # trimesh TrackedArray
    # The count never reaches an unpickler for the dataset's own files.
    monkeypatch.setattr(module, "read_landmarks_pkl", lambda path: pytest.fail("unpickled"))
    assert module.landmark_frame_count(mmface4d_sample_dir / "000337_0.pkl") == 67
    # A payload is no numpy pickle: no shortcut, and the fallback refuses it.
    marker = tmp_path / "pwned"
    _write_payload(tmp_path / "evil_0.pkl", marker)
    assert pickled_array_shape(tmp_path / "evil_0.pkl") is None
    monkeypatch.undo()
    with pytest.raises(InputError, match="refused"):
        module.landmark_frame_count(tmp_path / "evil_0.pkl")
    assert not marker.exists()
