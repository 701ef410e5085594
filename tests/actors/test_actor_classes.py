"""The actor classes as plain objects (no Ray): markers, gap filling, staleness, checkpoint/restore."""

from __future__ import annotations

import time

import numpy as np

from actors import Dropped, FitActor, FrameReport, LandmarkActor, MeshPacket, NutActor, SmoothActor
from mmface4d_stream.formats.mesh_nut import MeshNutReader
from mmface4d_stream.pipeline.stage_config import FitStageConfig
from mmface4d_stream.frame_records import FrameSet, MeshFrame


def _mesh(frame: int, value: float, lost: bool = False) -> MeshFrame:
    return MeshFrame("s", frame, frame * 33_333_333, np.full((6, 3), value, np.float32), lost)


def test_encoder_fills_dropped_frames_and_ignores_replayed_ones(tmp_path):
    encoder = NutActor(str(tmp_path / "m"))
    faces = np.array([[0, 1, 2], [3, 4, 5]], np.int32)
    reports = [encoder.write(MeshPacket(_mesh(0, 0.1), faces)),
               encoder.write(Dropped("s", 1, "landmarks", "old")),
               encoder.write(MeshPacket(_mesh(3, 0.3))),  # frames 1, 2 never arrived as meshes
               encoder.write(MeshPacket(_mesh(2, 0.2))),  # re-run after a restart: already written
               encoder.write(None)]
    assert [r.kind if isinstance(r, FrameReport) else r for r in reports] == ["mesh", "dropped", "mesh", "replayed", None]
    assert reports[2].filled == 2
    counts = encoder.close(meta={"note": "test"})
    assert counts["frames_out"] == 4 and counts["frames_filled"] == 2 and counts["frames_written"] == 4
    with MeshNutReader(tmp_path / "m") as reader:
        values = [float(reader[i][0, 0]) for i in range(len(reader))]
    np.testing.assert_allclose(values, [0.1, 0.1, 0.1, 0.3], atol=1e-5)
    assert np.array_equal(np.load(tmp_path / "m_faces.npy"), faces)


def test_landmark_detector_drops_frames_older_than_the_latency_bound():
    detector = LandmarkActor(1, max_latency_ms=50.0)
    stale = FrameSet("s", 4, 0, [None], t_source_ns=time.monotonic_ns() - 200_000_000)
    dropped = detector.detect(stale)
    assert isinstance(dropped, Dropped) and dropped.frame == 4 and dropped.stage == "landmarks"
    assert detector.detect(None) is None
    marker = Dropped("s", 5, "source", "x")
    assert detector.detect(marker) is marker


def test_fitter_and_smoother_resume_from_a_checkpoint_exactly(one_camera_observed):
    observed = one_camera_observed
    options = FitStageConfig(face_model="template", device="cpu", torch_threads=1)

    def run(fitter, smoother, frames):
        out = []
        for obs in frames:
            packet = smoother.smooth(fitter.fit(obs))
            out.append(packet)
        return out

    fitter, smoother = FitActor(None, options, checkpoint_every=3), SmoothActor()
    straight = run(fitter, smoother, observed)
    assert all(isinstance(p, MeshPacket) and not p.mesh.lost for p in straight)
    assert straight[0].faces is not None and straight[1].faces is None
    checkpoint = straight[3].checkpoint
    assert checkpoint is not None and checkpoint.fitter is not None and checkpoint.smoother is not None
    assert checkpoint.frame == 3 and straight[4].checkpoint is None
    # The template rode in the first checkpoint only; the driver carries it over to the later ones.
    assert checkpoint.model is None and straight[0].checkpoint.model is not None
    checkpoint = checkpoint.carry_model(straight[0].checkpoint)

    # A fresh pair (as after a process restart) restored to frame 3 continues like the uninterrupted run.
    fitter2, smoother2 = FitActor(None, options, checkpoint_every=3), SmoothActor()
    fitter2.restore(checkpoint.fitter)
    smoother2.restore(checkpoint.smoother)
    resumed = run(fitter2, smoother2, observed[4:])
    assert resumed[0].faces is not None  # the publisher gets the topology again
    for a, b in zip(straight[4:], resumed):
        np.testing.assert_allclose(a.mesh.vertices, b.mesh.vertices, atol=2e-4)
    assert fitter2.summary()["frames"] == len(observed)


def test_stage_error_survives_pickling_with_its_context():
    import pickle

    from mmface4d_stream.errors import StageError

    error = pickle.loads(pickle.dumps(StageError("landmarks", "seq1", 17, 2, "ValueError: bad")))
    assert str(error) == "stage landmarks failed on sequence seq1, frame 17, camera 2: ValueError: bad"
    assert (error.stage, error.frame, error.camera) == ("landmarks", 17, 2)
