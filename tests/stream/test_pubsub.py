"""Publisher/subscriber over real loopback TCP sockets (ephemeral ports)."""

from __future__ import annotations

import argparse
import logging
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq

from mmface4d_stream.stream import schema
from mmface4d_stream.stream.curve import is_loopback_endpoint
from mmface4d_stream.stream.publisher import MeshPublisher, topology_id_of
from mmface4d_stream.stream.subscriber import MeshSubscriber

ANY_PORT = "tcp://127.0.0.1:*"
BFM_VERTICES = 35709


def _faces(n_vertices: int, n_faces: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n_vertices, size=(n_faces, 3))


def _vertices(n_vertices: int, frame: int) -> np.ndarray:
    base = np.linspace(-0.1, 0.1, n_vertices * 3, dtype=np.float32).reshape(n_vertices, 3)
    return base + np.float32(frame * 1e-3)


def _run_in_thread(target, *args) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def wrapper():
        try:
            result["value"] = target(*args)
        except BaseException as exc:  # surfaced by the test through `result`
            result["error"] = exc

    thread = threading.Thread(target=wrapper, daemon=True)
    thread.start()
    return thread, result


def test_offline_publisher_delivers_every_frame_in_order():
    n_frames, n_vertices = 120, BFM_VERTICES
    faces = _faces(n_vertices)
    with MeshPublisher(ANY_PORT, drop_when_full=False, send_hwm=2) as pub:
        pub.set_topology(faces, n_vertices)
        with MeshSubscriber(pub.endpoint, timeout_s=20, receive_hwm=2) as sub:
            assert pub.wait_for_subscribers(1, timeout_s=10)

            def produce():
                for frame in range(n_frames):
                    pub.publish_mesh(_vertices(n_vertices, frame), frame=frame, t_capture_ns=frame * 33_333_333)
                pub.publish_end()

            thread, result = _run_in_thread(produce)
            messages = list(sub)
            thread.join(20)
    assert "error" not in result
    meshes = [m for m in messages if isinstance(m, schema.MeshMessage)]
    assert [m.frame for m in meshes] == list(range(n_frames))
    assert [m.seq for m in meshes] == list(range(n_frames))
    np.testing.assert_array_equal(meshes[57].vertices, _vertices(n_vertices, 57))
    assert meshes[57].t_capture_ns == 57 * 33_333_333
    assert isinstance(messages[-1], schema.EndMessage)
    assert messages[-1].last_seq == n_frames - 1 and messages[-1].n_meshes == n_frames
    assert isinstance(messages[0], schema.TopologyMessage)
    np.testing.assert_array_equal(sub.topology.faces, faces)
    assert sub.topology.topology_id == topology_id_of(faces)
    assert sub.stats.dropped == 0 and sub.stats.rejected == 0 and sub.stats.meshes == n_frames
    assert pub.stats.meshes == n_frames and pub.stats.dropped == 0


def test_slow_subscriber_does_not_slow_the_live_publisher_and_drops_are_counted():
    n_frames, n_vertices = 300, BFM_VERTICES
    with MeshPublisher(ANY_PORT, drop_when_full=True, send_hwm=2) as pub:
        pub.set_topology(_faces(n_vertices), n_vertices)
        with MeshSubscriber(pub.endpoint, topics=("mesh", "end"), receive_hwm=2) as sub:
            assert pub.wait_for_subscribers(1, timeout_s=10)
            frames = [_vertices(n_vertices, i) for i in range(8)]
            send_times = []
            for frame in range(n_frames):
                start = time.perf_counter()
                assert pub.publish_mesh(frames[frame % 8], frame=frame)
                send_times.append(time.perf_counter() - start)
            # 300 x 428 KB is 128 MB: had the publisher waited for the reader, which reads nothing
            # until now, it would be stuck; it returns in a few ms per mesh instead.
            assert np.median(send_times) < 0.02
            assert sum(send_times) < 10.0
            meshes = []
            while (message := sub.recv(timeout_s=1.0)) is not None:
                meshes.append(message)
            assert pub.publish_end()
            end = sub.recv(timeout_s=5.0)
    assert isinstance(end, schema.EndMessage)
    assert 0 < len(meshes) < n_frames
    seqs = [m.seq for m in meshes]
    assert seqs == sorted(seqs)
    assert sub.stats.dropped == n_frames - len(meshes)
    assert sub.stats.dropped > 0


def test_topology_reaches_a_late_joiner_and_changes_are_broadcast():
    n_vertices = 500
    faces = _faces(n_vertices, seed=1)
    with MeshPublisher(ANY_PORT) as pub:
        first_id = pub.set_topology(faces, n_vertices)
        for frame in range(5):  # nobody listens yet
            pub.publish_mesh(_vertices(n_vertices, frame), frame=frame)
        with MeshSubscriber(pub.endpoint, timeout_s=0.05) as sub:
            frame = 5
            deadline = time.monotonic() + 10
            got_mesh = False
            while (sub.topology is None or not got_mesh) and time.monotonic() < deadline:
                pub.publish_mesh(_vertices(n_vertices, frame), frame=frame)
                frame += 1
                while (message := sub.recv()) is not None:
                    got_mesh |= isinstance(message, schema.MeshMessage)
            assert sub.topology is not None and got_mesh
            assert sub.topology.topology_id == first_id
            np.testing.assert_array_equal(sub.topology.faces, faces)

            new_faces = faces[::-1].copy()
            second_id = pub.set_topology(new_faces, n_vertices)
            assert second_id != first_id
            deadline = time.monotonic() + 5
            while sub.topology.topology_id != second_id and time.monotonic() < deadline:
                sub.recv()
            np.testing.assert_array_equal(sub.topology.faces, new_faces)
        assert pub.stats.topology_sent >= 2


def _raw_publisher(context: zmq.Context) -> tuple[zmq.Socket, str]:
    socket = context.socket(zmq.XPUB)
    socket.setsockopt(zmq.LINGER, 0)
    socket.bind(ANY_PORT)
    return socket, socket.getsockopt_string(zmq.LAST_ENDPOINT)


def test_malformed_messages_are_rejected_and_receiving_continues(caplog):
    context = zmq.Context.instance()
    raw, endpoint = _raw_publisher(context)
    good = schema.MeshMessage(seq=0, frame=0, t_capture_ns=1, t_publish_ns=2,
                              vertices=_vertices(10, 0), topology_id="t")
    parts = schema.encode(good)
    header = msgpack.unpackb(parts[1])
    bad_messages = [
        [b"mesh", msgpack.packb({**header, "schema": "other/1"}), parts[2]],
        [b"mesh", parts[1], parts[2][:-1]],
        [b"mesh", msgpack.packb({**header, "dtype": "<f8"}), parts[2]],
        [b"mesh", b"\xc1\xc1not msgpack", parts[2]],
        [b"mesh", parts[1]],
        [b"topology", parts[1], parts[2]],
        [b"status", b"", b""],
    ]
    try:
        with MeshSubscriber(endpoint, timeout_s=5) as sub:
            assert raw.poll(5000, zmq.POLLIN)  # the subscription has arrived
            while raw.poll(50, zmq.POLLIN):
                raw.recv()
            with caplog.at_level(logging.WARNING, logger="mmface4d_stream.stream.subscriber"):
                for bad in bad_messages:
                    raw.send_multipart(bad)
                raw.send_multipart(parts)
                received = sub.recv()
            assert isinstance(received, schema.MeshMessage)
            np.testing.assert_array_equal(received.vertices, good.vertices)
            assert sub.stats.rejected == len(bad_messages)
            assert sub.stats.received == 1
            assert "rejected malformed message" in caplog.text
            # and it keeps going
            raw.send_multipart(schema.encode(schema.EndMessage(3, 0, 1)))
            assert isinstance(sub.recv(), schema.EndMessage)
    finally:
        raw.close(linger=0)


def test_status_is_rate_limited_to_one_per_period():
    with MeshPublisher(ANY_PORT) as pub:
        with MeshSubscriber(pub.endpoint, topics=("status",), timeout_s=5) as sub:
            deadline = time.monotonic() + 5
            while not pub.poll_subscriptions() and time.monotonic() < deadline:
                time.sleep(0.01)
            stages = {"fitter": schema.StageStatus(fps=29.0, latency_ms=40.0, drops=1),
                      "source:cam0": {"fps": 30.0, "latency_ms": 2.0, "drops": 0}}
            assert pub.publish_status(stages)
            assert not pub.publish_status(stages)
            assert pub.publish_status(stages, force=True)
            first, second = sub.recv(), sub.recv()
    assert isinstance(first, schema.StatusMessage) and (first.seq, second.seq) == (0, 1)
    assert first.stages["fitter"] == schema.StageStatus(29.0, 40.0, 1)
    assert first.stages["source:cam0"].fps == 30.0
    assert sub.last_status == second


def test_curve_encrypted_stream_works_and_needs_the_server_key():
    server_public, server_secret = zmq.curve_keypair()
    with MeshPublisher(ANY_PORT, curve_public_key=server_public, curve_secret_key=server_secret,
                       drop_when_full=False) as pub:
        assert pub.secure
        pub.set_topology(_faces(100), 100)
        with MeshSubscriber(pub.endpoint, timeout_s=0.5) as plain, \
                MeshSubscriber(pub.endpoint, timeout_s=10, curve_server_key=server_public) as secure:
            assert pub.wait_for_subscribers(1, timeout_s=10)
            pub.publish_mesh(_vertices(100, 3), frame=3)
            pub.publish_end()
            messages = list(secure)
            assert plain.recv() is None  # the handshake never completes without the key
    meshes = [m for m in messages if isinstance(m, schema.MeshMessage)]
    assert len(meshes) == 1 and meshes[0].frame == 3
    np.testing.assert_array_equal(meshes[0].vertices, _vertices(100, 3))
    assert pub.stats.subscriptions == 1


def test_non_loopback_bind_requires_curve_keys():
    assert is_loopback_endpoint("tcp://127.0.0.1:5555")
    assert is_loopback_endpoint("tcp://localhost:5555")
    assert is_loopback_endpoint("tcp://[::1]:5555")
    assert is_loopback_endpoint("ipc:///tmp/mesh") and is_loopback_endpoint("inproc://mesh")
    assert not is_loopback_endpoint("tcp://*:5555")
    assert not is_loopback_endpoint("tcp://0.0.0.0:5555")
    assert not is_loopback_endpoint("tcp://192.168.1.20:5555")
    with pytest.raises(ValueError, match="unencrypted"):
        MeshPublisher("tcp://0.0.0.0:*")
    with pytest.raises(ValueError, match="both"):
        MeshPublisher(ANY_PORT, curve_public_key=zmq.curve_keypair()[0])


def test_publish_mesh_checks_vertex_count_against_topology():
    with MeshPublisher(ANY_PORT) as pub:
        with pytest.raises(ValueError, match="topology"):
            pub.publish_mesh(_vertices(10, 0), frame=0)
        pub.set_topology(_faces(10, 4), 10)
        with pytest.raises(ValueError, match="11 vertices"):
            pub.publish_mesh(_vertices(11, 0), frame=0)
    with pytest.raises(ValueError, match="closed"):
        pub.publish_mesh(_vertices(10, 0), frame=0)


def _subscribe_args(argv: list[str]) -> argparse.Namespace:
    from mmface4d_stream.stream import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    return parser.parse_args(["subscribe", *argv])


def test_subscribe_cli_records_a_stream_to_mesh_nut(tmp_path, capsys):
    mesh_nut = pytest.importorskip("mmface4d_stream.formats.mesh_nut")
    n_vertices, n_frames = 300, 12
    faces = _faces(n_vertices, 40)
    with MeshPublisher(ANY_PORT, drop_when_full=False) as pub:
        pub.set_topology(faces, n_vertices)
        args = _subscribe_args([pub.endpoint, "--save", str(tmp_path / "rec"), "--timeout", "20"])

        def produce():
            assert pub.wait_for_subscribers(1, timeout_s=20)
            for frame in range(n_frames):
                pub.publish_mesh(_vertices(n_vertices, frame), frame=frame)
            pub.publish_end()

        thread, result = _run_in_thread(produce)
        assert args.func(args) == 0
        thread.join(20)
    assert "error" not in result
    out = capsys.readouterr().out
    assert f"total {n_frames} meshes (end of sequence)" in out
    assert "publish->recv p50" in out
    np.testing.assert_array_equal(np.load(tmp_path / "rec_faces.npy"), faces)
    with mesh_nut.MeshNutReader(tmp_path / "rec", n_vertices=n_vertices) as reader:
        assert len(reader) == n_frames
        decoded = reader[7]
    step = (_vertices(n_vertices, 7).max() - _vertices(n_vertices, 7).min() + 0.1) / 2**16
    np.testing.assert_allclose(decoded, _vertices(n_vertices, 7), atol=step)


def test_subscribe_cli_stops_after_frames_and_on_timeout(capsys):
    with MeshPublisher(ANY_PORT, drop_when_full=False) as pub:
        pub.set_topology(_faces(50, 10), 50)
        args = _subscribe_args([pub.endpoint, "--frames", "3", "--timeout", "20"])

        def produce():
            assert pub.wait_for_subscribers(1, timeout_s=20)
            pub.publish_status({"fitter": schema.StageStatus(29.5, 31.0, 2)})
            for frame in range(5):
                pub.publish_mesh(_vertices(50, frame), frame=frame)

        thread, result = _run_in_thread(produce)
        assert args.func(args) == 0
        thread.join(20)
        out = capsys.readouterr().out
        assert "status: fitter 29.5 fps 31.0 ms 2 dropped" in out
        assert "total 3 meshes (frame limit)" in out
        args = _subscribe_args([pub.endpoint, "--timeout", "0.3"])
        assert args.func(args) == 1
        assert "total 0 meshes (timeout)" in capsys.readouterr().out


def test_subscriber_that_missed_the_topology_asks_for_it_again():
    n_vertices = 60
    faces = _faces(n_vertices, 20, seed=2)
    with MeshPublisher(ANY_PORT) as pub, MeshSubscriber(pub.endpoint, timeout_s=0.05) as sub:
        assert pub.wait_for_subscribers(1, timeout_s=10)
        pub.set_topology(faces, n_vertices)
        # Lose the topology on the way, as a subscriber with a full queue would.
        assert sub._socket.poll(5000)
        assert sub._socket.recv_multipart()[0] == b"topology"
        deadline = time.monotonic() + 10
        frame = 0
        while sub.topology is None and time.monotonic() < deadline:
            pub.publish_mesh(_vertices(n_vertices, frame), frame=frame)
            frame += 1
            while sub.recv() is not None:
                pass
        assert sub.topology is not None
        np.testing.assert_array_equal(sub.topology.faces, faces)
        assert pub.stats.topology_sent >= 2


def test_curve_client_allow_list_refuses_unknown_clients():
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    with MeshPublisher(ANY_PORT, curve_public_key=server_public, curve_secret_key=server_secret,
                       curve_client_keys=[client_public]) as pub:
        with MeshSubscriber(pub.endpoint, timeout_s=0.05, curve_server_key=server_public,
                            curve_public_key=client_public, curve_secret_key=client_secret) as allowed, \
                MeshSubscriber(pub.endpoint, timeout_s=0.05, curve_server_key=server_public) as stranger:
            assert pub.wait_for_subscribers(1, timeout_s=10)
            pub.set_topology(_faces(30, 5), 30)
            for frame in range(5):
                pub.publish_mesh(_vertices(30, frame), frame=frame)
                time.sleep(0.02)
            got = [m for m in iter(allowed.recv, None) if isinstance(m, schema.MeshMessage)]
            assert got and got[-1].frame == 4
            assert stranger.recv(timeout_s=0.3) is None
            pub.poll_subscriptions()
            assert pub.stats.subscriptions == 1


def test_subscribe_cli_reads_the_server_key_from_a_file(tmp_path, capsys):
    from mmface4d_stream.errors import InputError

    server_public, server_secret = zmq.curve_keypair()
    key_file = tmp_path / "server.key"
    key_file.write_text(server_public.decode() + "\n")
    with MeshPublisher(ANY_PORT, curve_public_key=server_public, curve_secret_key=server_secret,
                       drop_when_full=False) as pub:
        pub.set_topology(_faces(20, 5), 20)
        args = _subscribe_args([pub.endpoint, "--server-key", str(key_file), "--timeout", "20"])

        def produce():
            assert pub.wait_for_subscribers(1, timeout_s=20)
            for frame in range(4):
                pub.publish_mesh(_vertices(20, frame), frame=frame)
            pub.publish_end()

        thread, result = _run_in_thread(produce)
        assert args.func(args) == 0
        thread.join(20)
    assert "error" not in result
    assert "total 4 meshes (end of sequence)" in capsys.readouterr().out
    args = _subscribe_args(["tcp://127.0.0.1:1", "--server-key", "not-a-key"])
    with pytest.raises(InputError, match="40 Z85"):
        args.func(args)
