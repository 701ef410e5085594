"""`MeshPublisher`: the XPUB end of the mesh stream.

Two delivery policies, chosen with `drop_when_full`:

- live (``True``, default): every subscriber has its own queue of at most `send_hwm` messages;
  when a subscriber does not keep up, libzmq drops *that subscriber's* messages and
  `publish_mesh` returns at once. Other subscribers are not affected. The publisher cannot see
  those per-subscriber drops; each subscriber counts them from gaps in `seq`
  (`MeshSubscriber.stats.dropped`), and the `end` message carries the last `seq` so trailing
  losses are counted too. `end` itself is sent with a bounded wait (`end_timeout_s`).
- offline (``False``): the publisher waits until every connected subscriber has room, so nothing
  is lost and the caller runs at the pace of the slowest subscriber; `send_timeout_s` bounds
  the wait (a message that times out is counted in `stats.dropped`). Combine with
  `wait_for_subscribers` so that the first frames are not published before anyone listens.

The triangle list (`set_topology`) is sent whenever a subscription that covers the
``topology`` topic arrives (a subscriber that sees a mesh with an unknown `topology_id`
subscribes again to ask for it), and whenever it changes. Subscriptions are read from the socket on
every publish call (the socket is not thread-safe, so there is no background thread); a
subscriber that connects while the publisher is idle gets the topology before the next mesh.

Missed meshes: with `history` > 0 the publisher keeps the last `history` meshes and answers
requests for them on a second socket (`stream.repair`; endpoint announced in the topology
message), so a subscriber that must keep every frame (`subscribe --save`) asks for what its
queue dropped, without the graph ever waiting for it. What each such subscriber lost is reported
per subscriber in the status messages (stages named ``subscriber <name>``, `drops`).

Security: binding to a non-loopback address exposes face geometry to the network. There the
publisher requires CURVE keys (`curve_secret_key`/`curve_public_key`, e.g. from
`zmq.curve_keypair()`) and refuses to start without them unless `allow_insecure=True`, which
logs a warning. CURVE encrypts the stream; any client that knows the server's public key may
subscribe, unless `curve_client_keys` lists the client keys that may. The loopback rule and the
client-key allow-list are `stream.curve`'s.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import zmq

from mmface4d_stream.stream import schema
from mmface4d_stream.stream.curve import ClientKeyAllowList, is_loopback_endpoint, key_bytes
from mmface4d_stream.stream.repair import MeshHistory, RepairService, default_repair_url

log = logging.getLogger(__name__)

DEFAULT_URL = "tcp://127.0.0.1:5555"
# A closing publisher with a repair service stays at least this long (subscribers that joined
# late may still introduce themselves), longer while one is catching up.
REPAIR_IDLE_S = 0.2
END_REPEAT_S = 0.25


@dataclasses.dataclass
class PublisherStats:
    """Counters of one publisher.

    meshes: meshes handed to the socket; dropped: messages the socket refused (offline mode
    timeouts, `end` timeouts); topology_sent: topology messages sent; subscriptions: current
    number of subscriptions that cover the ``mesh`` topic (one per subscriber, as a rule).
    """

    meshes: int = 0
    dropped: int = 0
    topology_sent: int = 0
    status_sent: int = 0
    subscriptions: int = 0


def topology_id_of(faces: np.ndarray) -> str:
    """A content id for a triangle list: ``"f<F>-<12 hex digits of sha1>"``."""
    faces = np.ascontiguousarray(faces, dtype=schema.FACE_DTYPE)
    return f"f{faces.shape[0]}-{hashlib.sha1(faces.tobytes()).hexdigest()[:12]}"


class MeshPublisher:
    """Publishes meshes, topology, status and end messages on an XPUB socket.

    Args:
        url: endpoint to bind, default ``tcp://127.0.0.1:5555``; ``tcp://127.0.0.1:*`` picks a
            free port (see `endpoint`).
        drop_when_full: live policy (drop per subscriber) if True, offline policy (wait) if False.
        send_hwm: messages queued per subscriber before the policy applies.
        send_timeout_s: offline mode only: longest wait for room before a message is dropped;
            None waits forever.
        end_timeout_s: longest wait to deliver `end` to a subscriber whose queue is full.
        curve_secret_key, curve_public_key: the server's CURVE keypair (Z85 bytes or str).
        allow_insecure: permit a non-loopback bind without CURVE (logs a warning).
        curve_client_keys: if given, only subscribers with one of these CURVE public keys (Z85)
            may connect (checked by a ZAP handler thread); otherwise any client that knows the
            server's public key may.
        context: a zmq.Context to use; by default the process-wide instance.
        history: meshes kept for repair requests (0: none, no repair socket).
        repair_url: where the repair socket binds; default the next port of `url` (see
            `repair.default_repair_url`).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        drop_when_full: bool = True,
        send_hwm: int = 4,
        send_timeout_s: float | None = None,
        end_timeout_s: float = 1.0,
        curve_secret_key: bytes | str | None = None,
        curve_public_key: bytes | str | None = None,
        allow_insecure: bool = False,
        curve_client_keys: Sequence[bytes | str] | None = None,
        context: zmq.Context | None = None,
        history: int = 0,
        repair_url: str | None = None,
    ):
        if send_hwm < 1:
            raise ValueError(f"send_hwm must be >= 1, got {send_hwm}")
        if (curve_secret_key is None) != (curve_public_key is None):
            raise ValueError("give both curve_secret_key and curve_public_key, or neither")
        secure = curve_secret_key is not None
        if not secure and not is_loopback_endpoint(url):
            if not allow_insecure:
                raise ValueError(
                    f"refusing to publish unencrypted face meshes on {url}, which is reachable "
                    "from other machines: give curve_secret_key/curve_public_key "
                    "(zmq.curve_keypair()) or allow_insecure=True"
                )
            log.warning("publishing UNENCRYPTED meshes on non-loopback endpoint %s", url)
        if secure and not zmq.has("curve"):
            raise ValueError("this libzmq was built without CURVE support")
        if curve_client_keys is not None and not secure:
            raise ValueError("curve_client_keys needs the server keypair (curve_secret_key, curve_public_key)")

        self.drop_when_full = drop_when_full
        self.send_timeout_s = send_timeout_s
        self.end_timeout_s = end_timeout_s
        self.stats = PublisherStats()
        self._seq = 0
        self._status_seq = 0
        self._last_status_s = -np.inf
        self._topology: schema.TopologyMessage | None = None
        self._topology_parts: list[bytes] | None = None
        self._topology_pending = False
        self._end_parts: list | None = None
        self._closed = False

        self._own_context: zmq.Context | None = None
        self._authenticator = None
        if curve_client_keys is not None:
            # The ZAP handler answers for every CURVE socket of its context: give it one of its own.
            from zmq.auth.thread import ThreadAuthenticator

            self._own_context = zmq.Context()
            self._authenticator = ThreadAuthenticator(self._own_context)
            self._authenticator.start()
            self._authenticator.configure_curve_callback("*", ClientKeyAllowList(curve_client_keys))
        self._context = self._own_context or context or zmq.Context.instance()

        def curve_server(sock: zmq.Socket) -> None:
            """CURVE server options, shared by the publish socket and the repair socket."""
            if secure:
                sock.curve_server = True
                sock.curve_secretkey = key_bytes(curve_secret_key)
                sock.curve_publickey = key_bytes(curve_public_key)

        self._socket = self._context.socket(zmq.XPUB)
        try:
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.setsockopt(zmq.SNDHWM, send_hwm)
            # Every subscription and unsubscription reaches us (not only the first per topic),
            # so each new subscriber triggers a topology send and the count stays right.
            self._socket.setsockopt(zmq.XPUB_VERBOSER, 1)
            self._set_nodrop(not drop_when_full)
            curve_server(self._socket)
            self._socket.bind(url)
        except Exception:
            self._socket.close(linger=0)
            self._stop_authentication()
            raise
        self.endpoint: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.secure = secure
        self._history: MeshHistory | None = None
        self._repair: RepairService | None = None
        if history > 0:
            self._history = MeshHistory(history)
            try:
                self._repair = RepairService(repair_url or default_repair_url(url), self._history, self._context,
                                             socket_setup=curve_server)
            except Exception:
                self._socket.close(linger=0)
                self._stop_authentication()
                raise
        log.info("mesh publisher bound to %s (%s)", self.endpoint, "CURVE" if secure else "plain")

    # ------------------------------------------------------------------------- subscriptions

    def poll_subscriptions(self) -> int:
        """Read pending (un)subscriptions; send the topology to new subscribers.

        Returns the number of new subscriptions seen. Called by every publish method.
        """
        new = self._read_subscription_events()
        if self._repair is not None:
            self._repair.serve()
        if self._topology_pending and self._topology_parts is not None:
            self._topology_pending = False
            self._send_topology(self._topology_parts)
        return new

    def _read_subscription_events(self) -> int:
        new = 0
        while True:
            try:
                event = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if not event:
                continue
            subscribe, topic = event[0] == 1, event[1:]
            if schema.TOPIC_MESH.startswith(topic):
                self.stats.subscriptions = max(0, self.stats.subscriptions + (1 if subscribe else -1))
            if subscribe:
                new += 1
                if schema.TOPIC_TOPOLOGY.startswith(topic):
                    self._topology_pending = True
                log.debug("subscription to %r", topic)
        return new

    def wait_for_subscribers(self, n: int = 1, timeout_s: float | None = 10.0) -> bool:
        """Block until at least `n` subscriptions cover ``mesh`` (offline mode, tests).

        Returns False on timeout. ZeroMQ drops what is published before a subscriber's
        subscription arrives, so an offline publisher calls this before its first frame.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            self.poll_subscriptions()
            if self.stats.subscriptions >= n:
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            wait_ms = 100 if remaining is None else max(1, min(100, int(remaining * 1000)))
            self._socket.poll(wait_ms, zmq.POLLIN)

    # ----------------------------------------------------------------------------- publishing

    def set_topology(self, faces: np.ndarray, n_vertices: int, topology_id: str | None = None) -> str:
        """Set the triangle list (F, 3) vertex indices in [0, n_vertices); sends it if changed.

        Returns the topology id (content hash of `faces` unless given).
        """
        faces = np.ascontiguousarray(faces, dtype=schema.FACE_DTYPE)
        topology_id = topology_id or topology_id_of(faces)
        message = schema.TopologyMessage(topology_id=topology_id, n_vertices=int(n_vertices), faces=faces,
                                         repair=None if self._repair is None else self._repair.endpoint)
        parts = schema.encode_topology(message)
        changed = self._topology_parts != parts
        self._topology, self._topology_parts = message, parts
        self._read_subscription_events()
        if changed or self._topology_pending:
            self._topology_pending = False
            self._send_topology(parts)
        return topology_id

    @property
    def topology(self) -> schema.TopologyMessage | None:
        return self._topology

    def publish_mesh(
        self,
        vertices: np.ndarray,
        *,
        frame: int,
        t_capture_ns: int | None = None,
        smoothed: bool = False,
        cameras: Sequence[str] = (),
        fit: Mapping[str, Any] | None = None,
        thumbnails: Sequence[schema.Thumbnail] = (),
        topology_id: str | None = None,
    ) -> bool:
        """Publish one mesh: `vertices` float (N, 3) metres in the reference camera's frame.

        `t_capture_ns` defaults to now; `topology_id` to the current topology's. Returns True
        when the socket accepted it (in live mode a slow subscriber may still drop it).
        """
        self._check_open()
        vertices = np.asarray(vertices)
        if topology_id is None:
            if self._topology is None:
                raise ValueError("publish_mesh needs a topology: call set_topology first or pass topology_id")
            topology_id = self._topology.topology_id
            if vertices.ndim == 2 and vertices.shape[0] != self._topology.n_vertices:
                raise ValueError(
                    f"mesh has {vertices.shape[0]} vertices, topology {topology_id} has "
                    f"{self._topology.n_vertices}"
                )
        self.poll_subscriptions()
        now = time.time_ns()
        message = schema.MeshMessage(
            seq=self._seq,
            frame=int(frame),
            t_capture_ns=now if t_capture_ns is None else int(t_capture_ns),
            t_publish_ns=now,
            vertices=vertices,
            topology_id=topology_id,
            smoothed=smoothed,
            cameras=tuple(cameras),
            fit=fit or {},
            thumbnails=tuple(thumbnails),
        )
        parts = schema.encode_mesh(message)
        if self._history is not None:
            self._history.add(message.seq, parts)
        self._seq += 1
        sent = self._send_data(parts)
        if sent:
            self.stats.meshes += 1
        return sent

    def status_due(self, period_s: float = 1.0) -> bool:
        """Whether `publish_status` would send now (the last status is `period_s` old): callers
        that compute the report per call ask first."""
        return time.monotonic() - self._last_status_s >= period_s

    def publish_status(
        self, stages: Mapping[str, schema.StageStatus | Mapping[str, float]], *, period_s: float = 1.0, force: bool = False,
        state: str | None = None, budget: Mapping[str, Any] | None = None,
    ) -> bool:
        """Publish a status report at most once per `period_s` (unless `force`).

        `stages` maps stage name to `StageStatus` (or a dict with fps, latency_ms, drops); `state`
        and `budget` are the optional fields of `schema.StatusMessage`.
        Returns whether a message was sent; call it every frame and it keeps the 1 Hz rate.
        """
        self._check_open()
        now_s = time.monotonic()
        if not force and not self.status_due(period_s):
            return False
        self.poll_subscriptions()
        stages = {
            name: s if isinstance(s, schema.StageStatus) else schema.StageStatus(**s)
            for name, s in stages.items()
        }
        for name, dropped in self.subscriber_drops().items():
            stages[f"subscriber {name}"] = schema.StageStatus(fps=0.0, latency_ms=0.0, drops=dropped)
        parts = schema.encode_status(
            schema.StatusMessage(seq=self._status_seq, t_publish_ns=time.time_ns(), stages=stages, state=state,
                                 budget=budget)
        )
        self._last_status_s = now_s
        self._status_seq += 1
        sent = self._send_data(parts)
        if sent:
            self.stats.status_sent += 1
        return sent

    def publish_end(self, reason: str = "finished") -> bool:
        """Tell subscribers the sequence is over (waits up to `end_timeout_s` for full queues)."""
        self._check_open()
        self.poll_subscriptions()
        parts = schema.encode_end(
            schema.EndMessage(
                t_publish_ns=time.time_ns(), last_seq=self._seq - 1, n_meshes=self._seq, reason=reason
            )
        )
        timeout = self.end_timeout_s if self.drop_when_full else self.send_timeout_s
        self._end_parts = parts
        return self._send_control(parts, timeout)

    # -------------------------------------------------------------------------------- sending

    def _set_nodrop(self, nodrop: bool) -> None:
        self._socket.setsockopt(zmq.XPUB_NODROP, 1 if nodrop else 0)

    def _send_data(self, parts: list[bytes]) -> bool:
        if self.drop_when_full:
            # Lossy XPUB never blocks: a full subscriber queue drops this message for that one.
            self._socket.send_multipart(parts, copy=False)
            return True
        return self._send_waiting(parts, self.send_timeout_s)

    def _send_topology(self, parts: list[bytes]) -> None:
        # Live mode sends it lossily like a mesh: waiting here for a stuck subscriber would stall
        # the graph. The new subscriber's queue is empty, so it gets it; a stuck one that misses
        # a change asks again by re-subscribing (see MeshSubscriber).
        if self._send_data(parts):
            self.stats.topology_sent += 1

    def _send_control(self, parts: list[bytes], timeout_s: float | None) -> bool:
        """Send a message that must not be silently lost (`end`), waiting a bounded time."""
        if not self.drop_when_full:
            return self._send_waiting(parts, timeout_s)
        self._set_nodrop(True)
        try:
            return self._send_waiting(parts, timeout_s)
        finally:
            self._set_nodrop(False)

    def _send_waiting(self, parts: list[bytes], timeout_s: float | None) -> bool:
        """Send with XPUB_NODROP set: wait (polling) until every subscriber queue has room."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                self._socket.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
                return True
            except zmq.Again:
                pass
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                self.stats.dropped += 1
                log.warning("a subscriber queue stayed full for %.2f s; message dropped", timeout_s)
                return False
            # Subscriptions keep arriving while we wait; reading them also lets libzmq
            # process pipe activation so the send can go through. A subscriber catching up may
            # be waiting for repairs before it reads on: answer them meanwhile.
            self._read_subscription_events()
            if self._repair is not None:
                self._repair.serve()
            self._socket.poll(5 if remaining is None else max(1, min(5, int(remaining * 1000))), zmq.POLLOUT)

    # -------------------------------------------------------------------------------- closing

    def subscriber_drops(self) -> dict[str, int]:
        """Meshes lost on the way per repairing subscriber (as each reported in its last request)."""
        return {} if self._repair is None else dict(self._repair.dropped_by_subscriber)

    def _serve_last_repairs(self) -> None:
        """After `end`: keep answering (and the queues draining) while a repairing subscriber has
        not read `end` yet, for at most `end_timeout_s`; a moment longer for late introductions."""
        start = last_end = time.monotonic()
        while self.stats.subscriptions > 0 and time.monotonic() - start < self.end_timeout_s:
            self._repair.serve(timeout_ms=50)
            self._read_subscription_events()
            if not self._repair.catching_up and time.monotonic() - start > REPAIR_IDLE_S:
                break
            # libzmq gives a subscriber whose queue was full when `end` went out nothing, even with
            # XPUB_NODROP: repeat it (lossily) until every repairing subscriber has read one.
            if self._end_parts is not None and time.monotonic() - last_end > END_REPEAT_S:
                try:
                    self._socket.send_multipart(self._end_parts, flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    pass  # offline policy, a queue still full: try again next round
                last_end = time.monotonic()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("publisher is closed")

    def close(self, linger_s: float = 0.5) -> None:
        """Close the socket, giving queued messages up to `linger_s` to leave."""
        if self._closed:
            return
        self._closed = True
        if self._repair is not None:
            try:
                self._serve_last_repairs()
            finally:
                self._repair.close()
        self._socket.close(linger=int(linger_s * 1000))
        self._stop_authentication()

    def _stop_authentication(self) -> None:
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None
        if self._own_context is not None:
            self._own_context.term()
            self._own_context = None

    def __enter__(self) -> "MeshPublisher":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
