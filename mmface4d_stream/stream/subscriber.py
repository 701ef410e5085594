"""`MeshSubscriber`: the receiving end of the mesh stream.

It validates every message with `schema.decode`; a malformed one is logged, counted in
`stats.rejected` and skipped, and receiving goes on. Lost meshes are counted from gaps in the
publisher's `seq` (and from the `last_seq` of `end`). The latest topology is kept in `topology`.
With `repair=True` lost meshes are requested from the publisher's history (`stream.repair`) and
delivered in `seq` order before the message that revealed the gap.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence

import zmq

from mmface4d_stream.stream import schema
from mmface4d_stream.stream.curve import key_bytes
from mmface4d_stream.stream.publisher import DEFAULT_URL
from mmface4d_stream.stream.repair import RepairClient, reachable_repair_url

log = logging.getLogger(__name__)

# Rejections are logged individually up to this count, then only every `_LOG_EVERY`-th one.
_LOG_FIRST = 10
_LOG_EVERY = 100
_DEFAULT = object()
# A subscriber missing the topology asks the publisher again at most this often.
TOPOLOGY_REQUEST_PERIOD_S = 1.0


@dataclasses.dataclass
class SubscriberStats:
    """Counters of one subscriber.

    received: valid messages; meshes: valid mesh messages; rejected: malformed messages skipped;
    dropped: meshes lost on the way (gaps in `seq`); repaired: of those, meshes fetched again from
    the publisher's history (`repair=True`); last_error: why the last one was rejected.
    """

    received: int = 0
    meshes: int = 0
    rejected: int = 0
    dropped: int = 0
    repaired: int = 0
    last_error: str | None = None

    @property
    def lost(self) -> int:
        """Meshes missing for good: dropped and not repaired."""
        return self.dropped - self.repaired


class MeshSubscriber:
    """Connects a SUB socket to a mesh publisher and yields typed messages.

    Args:
        url: the publisher's endpoint, default ``tcp://127.0.0.1:5555``.
        topics: topics to receive (``"mesh"``, ``"topology"``, ``"status"``, ``"end"``); all by
            default. Leave ``"topology"`` in to have `topology` kept up to date.
        timeout_s: default wait for one message in `recv` and iteration; None waits forever.
        receive_hwm: messages queued locally before the publisher side starts dropping.
        curve_server_key: the publisher's CURVE public key (Z85); enables encryption.
        curve_public_key, curve_secret_key: this client's keypair; generated when omitted.
        stop_on_end: iteration ends after yielding an `EndMessage`.
        max_message_bytes: larger messages are rejected (counted, skipped); None: no limit.
        repair: ask the publisher for meshes this subscriber missed (when it keeps a history).
        name: how this subscriber is named in the publisher's status (default host:pid:n).
        context: a zmq.Context to use; by default the process-wide instance.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        topics: Sequence[str | bytes] = ("mesh", "topology", "status", "end"),
        *,
        timeout_s: float | None = None,
        receive_hwm: int = 4,
        curve_server_key: bytes | str | None = None,
        curve_public_key: bytes | str | None = None,
        curve_secret_key: bytes | str | None = None,
        stop_on_end: bool = True,
        context: zmq.Context | None = None,
        max_message_bytes: int | None = schema.DEFAULT_MAX_MESSAGE_BYTES,
        repair: bool = False,
        name: str | None = None,
    ):
        topic_bytes = [t.encode("ascii") if isinstance(t, str) else bytes(t) for t in topics]
        unknown = [t for t in topic_bytes if t not in schema.TOPICS]
        if unknown:
            raise ValueError(f"unknown topics {unknown}; choose from {list(schema.TOPICS)}")
        if (curve_public_key is None) != (curve_secret_key is None):
            raise ValueError("give both curve_public_key and curve_secret_key, or neither")
        self.url = url
        self.timeout_s = timeout_s
        self.stop_on_end = stop_on_end
        self.max_message_bytes = max_message_bytes
        self._repair_wanted = repair
        self._repair_name = name
        self._repair_client: RepairClient | None = None
        self._pending: collections.deque[schema.Message] = collections.deque()
        self._curve = None
        self.stats = SubscriberStats()
        self.topology: schema.TopologyMessage | None = None
        self.last_status: schema.StatusMessage | None = None
        self._last_seq: int | None = None
        self._closed = False
        self._wants_topology = schema.TOPIC_TOPOLOGY in topic_bytes
        self._last_topology_request_s = -float("inf")

        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.SUB)
        try:
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.setsockopt(zmq.RCVHWM, receive_hwm)
            if curve_server_key is not None:
                if curve_public_key is None:
                    curve_public_key, curve_secret_key = zmq.curve_keypair()
                self._curve = tuple(key_bytes(k) for k in (curve_server_key, curve_public_key, curve_secret_key))
                self._set_curve(self._socket)
            for topic in topic_bytes:
                self._socket.setsockopt(zmq.SUBSCRIBE, topic)
            self._socket.connect(url)
        except Exception:
            self._socket.close(linger=0)
            raise

    def recv(self, timeout_s: float | None = _DEFAULT) -> schema.Message | None:
        """The next valid message, or None if none arrives within `timeout_s`.

        `timeout_s` defaults to the subscriber's `timeout_s`; None waits forever. Malformed
        messages are skipped (and do not restart the wait).
        """
        if self._closed:
            raise ValueError("subscriber is closed")
        if self._pending:
            return self._pending.popleft()
        timeout_s = self.timeout_s if timeout_s is _DEFAULT else timeout_s
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            remaining_ms = None
            if deadline is not None:
                remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
            if not self._socket.poll(remaining_ms, zmq.POLLIN):
                return None
            parts = self._socket.recv_multipart(copy=False)
            try:
                message = schema.decode(parts, self.max_message_bytes)
            except schema.WireFormatError as exc:
                self._reject(str(exc))
                continue
            missing = self._missing_before(message)
            self._account(message)
            if self._repair_client is not None:
                if missing:
                    self._pending.extend(self._repaired(missing))
                if isinstance(message, schema.EndMessage):
                    self._repair_client.finish(self.stats.dropped)
                if self._pending:
                    self._pending.append(message)
                    return self._pending.popleft()
            return message

    def __iter__(self) -> Iterator[schema.Message]:
        """Valid messages until `end` (with `stop_on_end`); raises TimeoutError after `timeout_s` of silence."""
        while True:
            message = self.recv()
            if message is None:
                raise TimeoutError(f"no message from {self.url} within {self.timeout_s} s")
            yield message
            if self.stop_on_end and isinstance(message, schema.EndMessage):
                return

    def meshes(self) -> Iterator[schema.MeshMessage]:
        """Only the mesh messages of `iter(self)` (topology and status are still recorded)."""
        for message in self:
            if isinstance(message, schema.MeshMessage):
                yield message

    def _set_curve(self, sock: zmq.Socket) -> None:
        server, public, secret = self._curve
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = server, public, secret

    def _missing_before(self, message: schema.Message) -> range:
        """The seqs lost between the last mesh and `message` (a mesh, or `end` with its last_seq)."""
        if self._last_seq is None:
            return range(0)
        if isinstance(message, schema.MeshMessage):
            return range(self._last_seq + 1, message.seq)
        if isinstance(message, schema.EndMessage):
            return range(self._last_seq + 1, message.last_seq + 1)
        return range(0)

    def _repaired(self, missing: range) -> list[schema.MeshMessage]:
        meshes, gone = self._repair_client.fetch(list(missing), self.stats.dropped)
        meshes.sort(key=lambda m: m.seq)
        self.stats.repaired += len(meshes)
        self.stats.received += len(meshes)
        self.stats.meshes += len(meshes)
        if gone:
            log.warning("%d missed meshes are no longer held by the publisher (seq %d..%d)", len(gone), gone[0],
                        gone[-1])
        return meshes

    def _open_repair(self, announced: str) -> None:
        url = reachable_repair_url(announced, self.url)
        self._repair_client = RepairClient(url, self._context, name=self._repair_name,
                                           socket_setup=None if self._curve is None else self._set_curve)
        log.info("missed meshes will be requested from %s", url)

    def _reject(self, reason: str) -> None:
        self.stats.rejected += 1
        self.stats.last_error = reason
        n = self.stats.rejected
        if n <= _LOG_FIRST or n % _LOG_EVERY == 0:
            log.warning("rejected malformed message #%d from %s: %s", n, self.url, reason)

    def _account(self, message: schema.Message) -> None:
        self.stats.received += 1
        if isinstance(message, schema.MeshMessage):
            self.stats.meshes += 1
            if self._last_seq is not None and message.seq > self._last_seq:
                self.stats.dropped += message.seq - self._last_seq - 1
            elif self._last_seq is not None:
                log.info("mesh seq went back from %d to %d: publisher restarted", self._last_seq, message.seq)
            self._last_seq = message.seq
            if self.topology is None or message.topology_id != self.topology.topology_id:
                self._request_topology(message)
        elif isinstance(message, schema.TopologyMessage):
            if self.topology is None or self.topology.topology_id != message.topology_id:
                log.info(
                    "topology %s: %d vertices, %d faces",
                    message.topology_id, message.n_vertices, message.n_faces,
                )
            self.topology = message
            if self._repair_wanted and message.repair and self._repair_client is None:
                self._open_repair(message.repair)
        elif isinstance(message, schema.StatusMessage):
            self.last_status = message
        elif isinstance(message, schema.EndMessage):
            # Meshes before a late joiner's first one are not losses; only count after it.
            if self._last_seq is not None and message.last_seq > self._last_seq:
                self.stats.dropped += message.last_seq - self._last_seq
            self._last_seq = None

    def _request_topology(self, message: schema.MeshMessage) -> None:
        """Re-subscribe to ``topology``: the publisher's XPUB sees it and sends the topology again."""
        if not self._wants_topology:
            return
        now = time.monotonic()
        if now - self._last_topology_request_s < TOPOLOGY_REQUEST_PERIOD_S:
            return
        self._last_topology_request_s = now
        log.debug("mesh %d uses topology %s, not received yet: asking for it", message.seq, message.topology_id)
        self._socket.setsockopt(zmq.SUBSCRIBE, schema.TOPIC_TOPOLOGY)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._socket.close(linger=0)
            if self._repair_client is not None:
                self._repair_client.close()

    def __enter__(self) -> "MeshSubscriber":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
