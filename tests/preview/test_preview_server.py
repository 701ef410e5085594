"""The preview server without a browser: an aiohttp WebSocket client reads what a page would get."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import numpy as np
import pytest
import zmq

from mmface4d_stream.preview import framing, relay, start_preview_server
from mmface4d_stream.preview.assets import missing_assets
from mmface4d_stream.stream import schema
from preview_helpers import StreamPlayer, bind_retrying, deformed, jpeg_bytes, wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def server(stream_url):
    srv = start_preview_server(stream_url, "127.0.0.1", 0)
    yield srv
    srv.close()


class PageClient:
    """What a page receives: frames decoded with `framing`, status dicts; acks on demand."""

    def __init__(self, ws):
        self.ws = ws
        self.meshes: list[framing.MeshFrame] = []
        self.topologies: list[framing.TopologyFrame] = []
        self.thumbnails: list[framing.ThumbnailFrame] = []
        self.statuses: list[dict] = []

    async def read_for(self, seconds: float, ack: bool = True, until=None) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if until is not None and until(self):
                return
            try:
                message = await self.ws.receive(timeout=max(0.01, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                return
            if message.type == aiohttp.WSMsgType.BINARY:
                frame = framing.decode_frame(message.data)
                if isinstance(frame, framing.MeshFrame):
                    self.meshes.append(frame)
                    if ack:
                        await self.ws.send_str(json.dumps({"type": "ack", "n": 1}))
                elif isinstance(frame, framing.TopologyFrame):
                    self.topologies.append(frame)
                else:
                    self.thumbnails.append(frame)
            elif message.type == aiohttp.WSMsgType.TEXT:
                self.statuses.append(json.loads(message.data))
            else:
                raise AssertionError(f"socket ended: {message.type} {message.data!r}")


async def _with_page(server, body, path="/ws", headers=None):
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"http://127.0.0.1:{server.port}{path}", headers=headers) as ws:
            return await body(PageClient(ws))


def run_page(server, body, **kwargs):
    return asyncio.run(_with_page(server, body, **kwargs))


def test_page_gets_topology_then_bit_exact_meshes_and_status(server, stream_url):
    player = StreamPlayer(stream_url, thumbnails={"1": jpeg_bytes(shade=10), "2": jpeg_bytes(shade=200)})
    try:
        async def body(page):
            await page.read_for(10, until=lambda p: len(p.meshes) >= 30 and p.thumbnails and p.statuses
                                and p.statuses[-1]["stream"]["stages"])
            return page

        page = run_page(server, body)
    finally:
        player.stop()
    assert len(page.topologies) == 1
    topology = page.topologies[0]
    assert topology.n_vertices == player.n_vertices
    np.testing.assert_array_equal(topology.faces, player.faces)
    assert all(m.topology_key == topology.topology_key for m in page.meshes)
    seqs = [m.seq for m in page.meshes]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    last = page.meshes[-1]
    np.testing.assert_array_equal(last.vertices, deformed(player.unit, last.frame))
    assert last.smoothed and not last.lost
    assert {t.camera for t in page.thumbnails} <= {"1", "2"}
    assert page.thumbnails[0].jpeg[:2] == b"\xff\xd8"
    stream = page.statuses[-1]["stream"]
    assert stream["state"] == "streaming"
    assert stream["topology"]["n_vertices"] == player.n_vertices
    assert stream["stages"]["fitter"] == {"fps": 30.0, "latency_ms": 12.5, "drops": 1}
    assert stream["rate_fps"] > 15
    assert stream["latency_ms"] is not None and 0 <= stream["latency_ms"] < 1000
    assert stream["mesh"]["fit"]["iterations"] == 3 and stream["mesh"]["lost"] is False


def test_slow_page_gets_only_the_window_then_the_newest_mesh(server, stream_url):
    player = StreamPlayer(stream_url, fps=60)
    try:
        async def body(page):
            await page.read_for(1.5, ack=False)
            held = list(page.meshes)
            newest_before_ack = player.frames_sent
            await page.ws.send_str(json.dumps({"type": "ack", "n": len(held)}))
            await page.read_for(0.5, ack=False, until=lambda p: len(p.meshes) > len(held))
            return held, newest_before_ack, page

        held, newest_before_ack, page = run_page(server, body)
    finally:
        player.stop()
    # ~90 meshes were published meanwhile; the page without acks got exactly its window.
    assert len(held) == framing.MESH_WINDOW
    after = page.meshes[len(held)]
    # After the ack it gets the newest mesh, not the next one in line.
    assert after.frame >= newest_before_ack - 3
    assert after.seq > held[-1].seq + 30


def test_garbage_on_the_zmq_socket_is_counted_and_skipped(server, stream_url):
    faces = np.array([[0, 1, 2], [0, 2, 3]], np.int32)
    vertices = np.array([[0, 0, 0.7], [0.1, 0, 0.7], [0.1, 0.1, 0.7], [0, 0.1, 0.7]], np.float32)
    context = zmq.Context.instance()
    xpub = context.socket(zmq.XPUB)
    xpub.setsockopt(zmq.LINGER, 0)
    xpub.bind(stream_url)
    try:
        xpub.recv()  # the preview's subscription
        topology = schema.TopologyMessage("quad", 4, faces)
        good = schema.MeshMessage(seq=0, frame=5, t_capture_ns=time.time_ns(), t_publish_ns=time.time_ns(),
                                  vertices=vertices, topology_id="quad")
        bad_payload = schema.encode(good)
        bad_payload[2] = bad_payload[2][:-4]
        garbage = [
            [b"mesh", b"\xc1\xc1 not msgpack", b""],
            [b"nonsense", b"", b""],
            bad_payload,
            [b"mesh"],
            [b"topology", b"\x80", b"\x00" * 7],
        ]

        async def body(page):
            for parts in garbage:
                xpub.send_multipart(parts)
            xpub.send_multipart(schema.encode(topology))
            for parts in garbage:
                xpub.send_multipart(parts)
            xpub.send_multipart(schema.encode(good))
            await page.read_for(5, until=lambda p: p.meshes and p.statuses and p.statuses[-1]["stream"]["rejected"] >= 8)
            return page

        page = run_page(server, body)
    finally:
        xpub.close(0)
    assert page.topologies[0].n_vertices == 4
    np.testing.assert_array_equal(page.meshes[0].vertices, vertices)
    stream = page.statuses[-1]["stream"]
    # Twice four malformed messages; the unknown topic is filtered out by ZeroMQ's subscription.
    assert stream["rejected"] == 8
    assert stream["last_error"]


def test_malformed_page_messages_do_not_break_the_socket(server, stream_url):
    player = StreamPlayer(stream_url)
    try:
        async def body(page):
            await page.read_for(5, until=lambda p: p.meshes)
            for junk in ["not json", "[1, 2]", '{"type": "ack", "n": -3}', '{"type": "ack", "n": true}',
                         '{"type": "hello"}', '{"type": "ack", "n": 1e9}']:
                await page.ws.send_str(junk)
            await page.ws.send_bytes(b"\x00\x01garbage")
            count = len(page.meshes)
            await page.read_for(5, until=lambda p: len(p.meshes) >= count + 10 and p.statuses
                                and p.statuses[-1]["page"]["bad_messages"] >= 7)
            return count, page

        count, page = run_page(server, body)
    finally:
        player.stop()
    assert len(page.meshes) >= count + 10
    assert page.statuses[-1]["page"]["bad_messages"] == 7


def test_publisher_restart_with_a_new_topology(server, stream_url):
    first = StreamPlayer(stream_url, n_lat=12, n_lon=24)
    second = None
    try:
        async def body(page):
            nonlocal second
            await page.read_for(5, until=lambda p: p.meshes)
            first.stop(end=True)
            await page.read_for(5, until=lambda p: p.statuses and p.statuses[-1]["stream"]["state"] == "ended")
            ended = page.statuses[-1]["stream"]
            second = StreamPlayer(stream_url, n_lat=30, n_lon=60)
            n_before = len(page.meshes)
            await page.read_for(10, until=lambda p: len(p.topologies) == 2 and len(p.meshes) >= n_before + 10
                                and p.statuses[-1]["stream"]["state"] == "streaming")
            return ended, n_before, page

        ended, n_before, page = run_page(server, body)
    finally:
        first.stop()
        if second is not None:
            second.stop()
    assert ended["end_reason"] == "finished"
    small, big = page.topologies
    assert small.n_vertices == first.n_vertices and big.n_vertices == second.n_vertices != small.n_vertices
    assert big.topology_key != small.topology_key
    new_meshes = page.meshes[n_before:]
    assert all(m.topology_key == big.topology_key and m.vertices.shape == (second.n_vertices, 3) for m in new_meshes)
    assert page.statuses[-1]["stream"]["state"] == "streaming"


def test_reconnecting_page_gets_the_current_state_at_once(server, stream_url):
    player = StreamPlayer(stream_url)
    try:
        run_page(server, lambda page: page.read_for(5, until=lambda p: p.meshes))
        player.stop()  # no new meshes: a reloaded page must still get the last one

        async def body(page):
            await page.read_for(3, until=lambda p: p.meshes and p.statuses)
            return page

        page = run_page(server, body)
    finally:
        player.stop()
    assert page.topologies[0].n_vertices == player.n_vertices
    np.testing.assert_array_equal(page.meshes[-1].vertices, player.last_vertices)


def test_lost_face_and_stalled_stream_reach_the_status(server, stream_url, monkeypatch):
    monkeypatch.setattr(relay, "STALLED_AFTER_S", 0.5)
    player = StreamPlayer(stream_url, lost=True)
    try:
        wait_until(lambda: server.relay.info()["meshes"] > 3, what="meshes")
        info = server.relay.info()
        assert info["mesh"]["lost"] is True
        assert server.relay.snapshot().mesh is not None
        assert framing.decode_frame(server.relay.snapshot().mesh.frame).lost
    finally:
        player.stop()
    wait_until(lambda: server.relay.info()["state"] == "stalled", what="stalled state")


def test_nan_mesh_is_not_forwarded(server, stream_url):
    player = StreamPlayer(stream_url, fps=10)
    wait_until(lambda: server.relay.snapshot().mesh is not None, what="a mesh")
    player.stop()
    good = server.relay.snapshot().mesh
    publisher = bind_retrying(stream_url)
    try:
        publisher.set_topology(player.faces, player.n_vertices)
        wait_until(lambda: publisher.poll_subscriptions() is not None and publisher.stats.subscriptions > 0,
                   what="the preview to subscribe")
        nan = np.full((player.n_vertices, 3), np.nan, np.float32)
        for frame in range(5):
            publisher.publish_mesh(nan, frame=frame, fit={"lost": True})
            time.sleep(0.02)
        # The wire schema refuses non-finite vertices: the preview's subscriber rejects them.
        wait_until(lambda: server.relay.info()["rejected"] >= 5, what="NaN meshes rejected")
    finally:
        publisher.close(0)
    assert server.relay.snapshot().mesh == good
    assert "NaN or inf" in server.relay.info()["last_error"]


def test_index_page_and_status_json(server):
    async def body():
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{server.port}/") as response:
                index = (response.status, await response.text())
            async with session.get(f"http://127.0.0.1:{server.port}/status.json") as response:
                status = await response.json()
            async with session.get(f"http://127.0.0.1:{server.port}/static/preview.js") as response:
                script = response.status
        return index, status, script

    (code, html), status, script = asyncio.run(body())
    if missing_assets():
        assert code == 503 and "build_preview_assets.sh" in html
    else:
        assert code == 200 and '"three": "/static/vendor/three.module.js"' in html
    assert script == 200
    assert status["stream"]["state"] == "waiting"
    assert status["stream"]["url"] == server.stream_url


def test_missing_assets_give_an_error_page(stream_url, tmp_path):
    (tmp_path / "index.html").write_text("<html></html>")
    with start_preview_server(stream_url, "127.0.0.1", 0, static_dir=tmp_path) as srv:
        async def body():
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{srv.port}/") as response:
                    return response.status, await response.text()

        code, html = asyncio.run(body())
    assert code == 503
    assert "Preview assets not built" in html
    assert "tools/build_preview_assets.sh" in html and "vendor/three.module.js" in html


def test_token_and_origin_checks(stream_url):
    with start_preview_server(stream_url, "127.0.0.1", 0, token="s3cret") as srv:
        assert srv.url.endswith("/?token=s3cret")

        async def body():
            base = f"http://127.0.0.1:{srv.port}"
            codes = {}
            async with aiohttp.ClientSession() as session:
                for name, path in [("index", "/"), ("status", "/status.json"), ("ws", "/ws")]:
                    async with session.get(base + path) as response:
                        codes[name] = response.status
                async with session.get(base + "/status.json?token=s3cret") as response:
                    codes["status_token"] = response.status
                try:
                    async with session.ws_connect(base + "/ws?token=s3cret", headers={"Origin": "http://evil.example"}):
                        codes["cross_origin"] = 101
                except aiohttp.WSServerHandshakeError as exc:
                    codes["cross_origin"] = exc.status
                async with session.ws_connect(base + "/ws?token=s3cret", headers={"Origin": base}) as ws:
                    message = await ws.receive(timeout=5)
                    codes["same_origin"] = json.loads(message.data)["type"]
            return codes

        codes = asyncio.run(body())
    assert codes == {"index": 403, "status": 403, "ws": 403, "status_token": 200,
                     "cross_origin": 403, "same_origin": "status"}


def test_without_a_token_only_loopback_host_names_are_served(server):
    async def body():
        codes = []
        async with aiohttp.ClientSession() as session:
            for host in ("127.0.0.1", "localhost", "attacker.example", "192.168.1.20"):
                url = f"http://127.0.0.1:{server.port}/status.json"
                async with session.get(url, headers={"Host": f"{host}:{server.port}"}) as response:
                    codes.append(response.status)
        return codes

    assert asyncio.run(body()) == [200, 200, 403, 403]


def test_non_loopback_host_gets_a_token():
    from mmface4d_stream.preview.server import PreviewServer

    server = PreviewServer("tcp://127.0.0.1:5555", host="0.0.0.0", port=0)
    assert server.token and len(server.token) >= 16
    assert server.url.startswith("http://127.0.0.1:0/?token=")
    assert PreviewServer("tcp://127.0.0.1:5555", host="::1", port=8000).token is None
    with pytest.raises(ValueError, match="token must be a non-empty string"):
        PreviewServer("tcp://127.0.0.1:5555", token="")


def test_bad_arguments(stream_url):
    with pytest.raises(ValueError, match="port must be in"):
        start_preview_server(stream_url, "127.0.0.1", 70000)
    with pytest.raises(ValueError, match="cannot subscribe to 'nonsense://x'"):
        start_preview_server("nonsense://x", "127.0.0.1", 0)
    with start_preview_server(stream_url, "127.0.0.1", 0) as srv:
        with pytest.raises(OSError):
            start_preview_server(stream_url, "127.0.0.1", srv.port)


def test_cli_serves_until_duration_and_reports_a_busy_port(stream_url, capsys):
    from mmface4d_stream.cli import main

    t0 = time.monotonic()
    assert main(["preview", stream_url, "--port", "0", "--duration", "0.5"]) == 0
    assert 0.4 < time.monotonic() - t0 < 10
    with start_preview_server(stream_url, "127.0.0.1", 0) as srv:
        assert main(["preview", stream_url, "--port", str(srv.port)]) == 2
    assert f"port {srv.port} on 127.0.0.1 is in use" in capsys.readouterr().err


def test_server_relays_a_bfm_sized_stream_at_camera_rate(server, stream_url):
    """35,911 vertices (a BFM-sized sphere) at 30 frames/s reach an acknowledging page at >= 20 frames/s."""
    player = StreamPlayer(stream_url, n_lat=190, n_lon=189)
    assert player.n_vertices == 189 * 189 + 2
    try:
        async def body(page):
            await page.read_for(10, until=lambda p: len(p.meshes) >= 3)
            t0, n0 = time.monotonic(), len(page.meshes)
            await page.read_for(3.0)
            return (len(page.meshes) - n0) / (time.monotonic() - t0)

        rate = run_page(server, body)
    finally:
        player.stop()
    print(f"preview server delivered {rate:.1f} BFM-sized meshes/s (publisher at 30/s, shared 2-core machine)")
    assert rate >= 20


def test_encrypted_stream_with_the_publisher_key(stream_url):
    from mmface4d_stream.stream import MeshPublisher
    from preview_helpers import sphere_mesh

    public, secret = zmq.curve_keypair()
    vertices, faces, _ = sphere_mesh(8, 16)
    publisher = MeshPublisher(stream_url, curve_public_key=public, curve_secret_key=secret)
    try:
        publisher.set_topology(faces, len(vertices))
        with start_preview_server(stream_url, "127.0.0.1", 0,
                                  subscriber_options={"curve_server_key": public.decode()}) as srv:
            def delivered():
                publisher.publish_mesh(vertices, frame=1)
                time.sleep(0.05)
                return srv.relay.snapshot().mesh

            mesh = wait_until(delivered, what="an encrypted mesh")
    finally:
        publisher.close(0)
    np.testing.assert_array_equal(framing.decode_frame(mesh.frame).vertices, vertices)
