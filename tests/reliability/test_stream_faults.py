"""Item 3: an idle subscriber costs the others nothing; a stream beyond loopback needs CURVE."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq

from actors.records import MeshPacket
from actors.publish_actor import PublishActor
from graphs.config import load_config
from mmface4d_stream.errors import InputError
from mmface4d_stream.stream import schema
from mmface4d_stream.stream.curve import server_keys
from mmface4d_stream.stream.subscriber import MeshSubscriber
from mmface4d_stream.frame_records import MeshFrame
from mmface4d_stream.pipeline.stage_config import PublishConfig

N_VERTICES = 35709  # BFM size: 428 KB a mesh, so an idle subscriber's queues really fill
FACES = np.array([[0, 1, 2]], np.int32)


def _packet(frame: int) -> MeshPacket:
    vertices = np.full((N_VERTICES, 3), frame * 1e-3, np.float32)
    return MeshPacket(MeshFrame("s", frame, 0, vertices, False), FACES if frame == 0 else None)


def test_idle_subscriber_neither_stalls_the_offline_graph_nor_costs_others_frames():
    """The issue's case: one SUB subscribes and never reads; the real one got 10 of 30 meshes."""
    publisher = PublishActor("tcp://127.0.0.1:*", drop_when_full=False, send_timeout_s=10.0)
    context = zmq.Context()
    idle = context.socket(zmq.SUB)
    idle.setsockopt(zmq.RCVHWM, 1)
    idle.setsockopt(zmq.RCVBUF, 4096)
    idle.setsockopt(zmq.SUBSCRIBE, b"")
    idle.connect(publisher.endpoint)
    received: list[int] = []
    reader = MeshSubscriber(publisher.endpoint, timeout_s=10.0, receive_hwm=1000, context=context)
    try:
        assert publisher.wait_for_subscribers(2, 10.0)

        def read():
            for message in reader:
                if isinstance(message, schema.MeshMessage):
                    received.append(message.frame)

        thread = threading.Thread(target=read)
        thread.start()
        # The real subscriber keeps up on average: it is never more than `lag` meshes behind,
        # which is less than its queue on the publisher's side (offline_hwm) even when the
        # machine is too busy for ZeroMQ's I/O thread to move anything meanwhile. The idle one
        # falls behind by all 300, more than its queues hold, so its messages must be dropped.
        n, lag = 300, PublishConfig.offline_hwm // 2
        publish_s = 0.0
        for frame in range(n):
            deadline = time.monotonic() + 10.0
            while frame - len(received) > lag and time.monotonic() < deadline:
                time.sleep(0.001)
            start = time.perf_counter()
            publisher.publish(_packet(frame))
            publish_s += time.perf_counter() - start
        publisher.close()
        thread.join(timeout=30)
    finally:
        reader.close()
        idle.close(linger=0)
        context.term()
    # Waiting on the idle one would have cost send_timeout_s (10 s) per frame once its queue filled.
    assert publish_s < 5.0, publish_s
    assert received == list(range(n))
    assert reader.stats.dropped == 0


def test_non_loopback_stream_is_refused_at_config_load_with_the_fixing_key(tmp_path):
    with pytest.raises(InputError, match=r"tcp://0\.0\.0\.0:5555 is reachable from other machines.*"
                                         r"publish\.curve_certificate"):
        load_config(None, {"publish.enabled": True, "publish.url": "tcp://0.0.0.0:5555"})
    assert server_keys("tcp://127.0.0.1:5555", None, "x") is None
    assert server_keys("ipc:///tmp/x", None, "x") is None


def test_curve_certificate_encrypts_the_graph_stream(tmp_path):
    import zmq.auth

    public_file, secret_file = zmq.auth.create_certificates(str(tmp_path), "server")
    config = load_config(None, {"publish.enabled": True, "publish.url": "tcp://0.0.0.0:*",
                                "publish.curve_certificate": secret_file})
    options = config.publish.publisher_options("tcp://0.0.0.0:*")
    assert options["curve_secret_key"] is not None
    with pytest.raises(InputError, match="only a public key"):
        server_keys("tcp://0.0.0.0:1", public_file, "x")
    publisher = PublishActor("tcp://127.0.0.1:*", drop_when_full=False, **options)
    port = publisher.endpoint.rsplit(":", 1)[1]
    plain = MeshSubscriber(f"tcp://127.0.0.1:{port}", timeout_s=0.5)
    secure = MeshSubscriber(f"tcp://127.0.0.1:{port}", timeout_s=10.0, curve_server_key=options["curve_public_key"])
    try:
        assert publisher.wait_for_subscribers(1, 10.0)
        publisher.publish(_packet(0))
        publisher.publish(_packet(1))
        got = []
        for _ in range(4):
            message = secure.recv()
            if isinstance(message, schema.MeshMessage):
                got.append(message.frame)
            if len(got) == 2:
                break
        assert got == [0, 1]
        assert plain.recv() is None  # a client without the key gets nothing
    finally:
        publisher.close()
        plain.close()
        secure.close()


def _mesh_parts(vertices: np.ndarray, seq: int = 0) -> list[bytes]:
    return schema.encode_mesh(schema.MeshMessage(seq=seq, frame=seq, t_capture_ns=0, t_publish_ns=0,
                                                 vertices=vertices, topology_id="t"))


def test_schema_rejects_non_finite_vertices_and_oversized_messages():
    good = np.zeros((100, 3), np.float32)
    assert schema.decode(_mesh_parts(good)).n_vertices == 100
    bad = good.copy()
    bad[7, 2] = np.nan
    with pytest.raises(schema.WireFormatError, match="1 vertices that are NaN or inf"):
        schema.decode(_mesh_parts(bad))
    big = np.zeros((200_000, 3), np.float32)  # 2.4 MB
    assert schema.decode(_mesh_parts(big)).n_vertices == 200_000  # within the default 4 MiB
    with pytest.raises(schema.WireFormatError, match="exceeds the limit of 1000000"):
        schema.decode(_mesh_parts(big), max_message_bytes=1_000_000)


def test_save_skips_and_counts_meshes_that_cannot_join_the_recording(tmp_path):
    from mmface4d_stream.formats.mesh_nut import MeshNutReader
    from mmface4d_stream.stream.cli import _Recorder

    recorder = _Recorder(str(tmp_path / "rec"))
    base = np.random.default_rng(0).normal(scale=0.05, size=(50, 3)).astype(np.float32)
    nan = base.copy()
    nan[3] = np.nan
    messages = [schema.MeshMessage(seq=k, frame=k, t_capture_ns=0, t_publish_ns=0, vertices=v, topology_id="t")
                for k, v in enumerate([base, nan, base[:40], base + 0.01])]
    assert [recorder.mesh(m) for m in messages] == [True, False, False, True]
    recorder.close()
    assert recorder.skipped == 2
    with MeshNutReader(tmp_path / "rec", n_vertices=50) as reader:
        assert len(reader) == 2


def test_a_slow_repairing_subscriber_gets_every_frame_and_its_drops_reach_the_status():
    """The publisher never waits; the slow subscriber's queue overflows, it asks for what it missed."""
    from mmface4d_stream.stream.publisher import MeshPublisher

    publisher = MeshPublisher("tcp://127.0.0.1:*", send_hwm=2, history=200, end_timeout_s=10.0)
    publisher.set_topology(FACES, N_VERTICES)
    slow = MeshSubscriber(publisher.endpoint, timeout_s=10.0, receive_hwm=2, repair=True, name="saver")
    monitor = MeshSubscriber(publisher.endpoint, timeout_s=10.0, receive_hwm=1000, topics=("status",))
    n = 60
    frames: list[int] = []
    statuses: list[schema.StatusMessage] = []
    try:
        assert publisher.wait_for_subscribers(1, 10.0)
        time.sleep(0.2)  # the topology (with the repair endpoint) reaches the subscriber first
        done = threading.Event()

        def read():
            for message in slow:
                if isinstance(message, schema.MeshMessage):
                    frames.append(message.frame)
                    time.sleep(0.02)  # far slower than the publisher below
            done.set()

        thread = threading.Thread(target=read)
        thread.start()
        start = time.perf_counter()
        for frame in range(n):
            publisher.publish_mesh(np.full((N_VERTICES, 3), frame, np.float32), frame=frame)
            publisher.publish_status({}, period_s=0.05)
            time.sleep(0.001)
        publish_s = time.perf_counter() - start
        publisher.publish_end()
        # The graph keeps reporting at its status rate while the subscriber catches up.
        until = time.monotonic() + 1.5
        while time.monotonic() < until:
            publisher.poll_subscriptions()
            publisher.publish_status({}, period_s=0.05)
            time.sleep(0.01)
        publisher.close()  # serves the last requests first
        thread.join(timeout=30)
        while (message := monitor.recv(timeout_s=0.5)) is not None:
            statuses.append(message)
    finally:
        slow.close()
        monitor.close()
    assert publish_s < 2.0
    assert frames == list(range(n))
    assert slow.stats.dropped > 0 and slow.stats.repaired == slow.stats.dropped and slow.stats.lost == 0
    reported = [s.stages["subscriber saver"].drops for s in statuses if "subscriber saver" in s.stages]
    assert reported and max(reported) > 0


def test_run_scripts_refuse_an_unencrypted_stream_beyond_loopback_at_once(tmp_path, capsys):
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(repo))
    import run_live
    import run_offline

    mkv = tmp_path / "take_0.mkv"
    mkv.write_bytes(b"")  # never opened: the refusal comes first
    start = time.perf_counter()
    assert run_live.main(["--replay", str(mkv), "--publish", "tcp://0.0.0.0:5599", "--out", str(tmp_path)]) == 2
    assert "--set publish.curve_certificate=FILE" in capsys.readouterr().err
    assert run_offline.main([str(mkv), "--publish", "tcp://0.0.0.0:5599", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--curve-certificate FILE" in err[0]
    assert time.perf_counter() - start < 10.0  # no Ray start
