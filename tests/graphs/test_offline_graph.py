"""The offline graph end to end on a synthetic capture: frames, accuracy, and the ZeroMQ stream."""

from __future__ import annotations

import json
import threading

import numpy as np

from graphs.config import load_config
from graphs.frame_graph import SequenceJob
from graphs.runner import run_jobs
from mmface4d_stream.fit.evaluate import evaluate_sequence
from mmface4d_stream.formats.mesh_nut import MeshNutReader
from mmface4d_stream.pipeline.sinks import is_finished
from mmface4d_stream.stream.schema import EndMessage, MeshMessage, StatusMessage, TopologyMessage
from mmface4d_stream.stream.subscriber import MeshSubscriber


def _subscribe(url: str, received: list, ready: threading.Event) -> None:
    with MeshSubscriber(url, timeout_s=120.0) as subscriber:
        ready.set()
        for message in subscriber:
            received.append(message)


def test_three_cameras_offline_every_frame_accurate_and_published(graph_capture, tmp_path, local_ray):
    url = "tcp://127.0.0.1:57311"
    config = load_config("3-cam", {"publish.wait_subscribers": 1, "publish.wait_timeout_s": 60.0})
    received: list = []
    ready = threading.Event()
    thread = threading.Thread(target=_subscribe, args=(url, received, ready), daemon=True)
    thread.start()
    ready.wait(10)
    save = tmp_path / "cap"
    job = SequenceJob([str(graph_capture.sequence_prefix)], str(save), "cap")
    [result] = run_jobs([job], config, publish_url=url, progress=False)
    thread.join(60)
    assert result.ok, result.error
    meta = json.loads((tmp_path / "cap_meta.json").read_text())
    assert meta["frames_written"] == 12 and meta["frames_dropped"] == [] and meta["frames_lost_face"] == []
    assert meta["policy"] == "offline" and meta["reference_camera"] == 1 and len(meta["cameras"]) == 3
    assert {"landmarks", "fit", "encode", "end_to_end"} <= set(meta["stage_latency_ms"])
    with MeshNutReader(save) as reader:
        assert len(reader) == 12
    error = evaluate_sequence(save, graph_capture.gt_mesh_prefix.parent, reference_device=meta["reference_camera"])
    # The fitter's bound on noisy synthetic captures with 3 cameras (the reconstruct tests use the same).
    assert error.recon_to_gt.mean_mm < 1.5 and error.recon_to_gt.p95_mm < 4.0, error

    # Offline publishing drops nothing: every frame, in order, after the topology; then the end.
    meshes = [m for m in received if isinstance(m, MeshMessage)]
    assert [m.frame for m in meshes] == list(range(12))
    assert isinstance(received[0], TopologyMessage) and received[0].n_vertices == meshes[0].vertices.shape[0]
    assert isinstance(received[-1], EndMessage) and received[-1].n_meshes == 12
    assert any(isinstance(m, StatusMessage) for m in received)
    with MeshNutReader(save) as reader:
        np.testing.assert_allclose(meshes[5].vertices, reader[5], atol=2e-5)

    # A re-run skips the finished sequence.
    assert is_finished(save)
    assert run_jobs([job], config, progress=False) == [None]


def test_fused_actors_write_the_same_files_as_separate_actors(graph_capture, tmp_path, local_ray):
    """`ray.fused_sinks` (smoother, encoder, publisher in one `SinkActor` actor) and
    `ray.fused_landmarks` (source and landmarks in one `FrontActor`) change the hops, not the output."""
    files = {}
    for fused in (False, True):
        config = load_config("1-cam", {"ray.fused_sinks": fused, "ray.fused_landmarks": fused,
                                       "smoother.enabled": True, "source.max_frames": 6})
        save = tmp_path / f"fused_{fused}"
        [result] = run_jobs([SequenceJob([str(graph_capture.sequence_prefix)], str(save), "cap")], config,
                            progress=False)
        assert result.ok, result.error
        assert result.meta["frames_written"] == 6 and result.meta["smoothed"]
        files[fused] = [(tmp_path / f"fused_{fused}_{k}.nut").read_bytes() for k in range(3)]
    assert files[True] == files[False]
