"""Missed meshes on request: a bounded history on the publisher and a repair channel per subscriber.

The mesh stream never waits for a subscriber: one that falls behind loses messages from its own
queue, alone. A subscriber that must keep every frame (`mmface4d subscribe --save`) asks for the
meshes it missed, by `seq`, over a second socket: the publisher keeps the last `capacity` encoded
meshes (`MeshHistory`) and a ROUTER socket (`RepairService`) answers from it. The service also
learns how many meshes each repairing subscriber lost, which the publisher reports per subscriber
in its status messages (`subscriber <name>` stages, `drops`).

Protocol (every frame msgpack unless noted), subscriber DEALER -> publisher ROUTER:

- request: ``[b"repair/1", {"subscriber": str, "seqs": [int, ...], "dropped": int, "done": bool}]``
- replies, in order: each mesh still held, as the very frames it was published with
  (``[b"mesh", header, payload, *thumbnails]``), then ``[b"repair/1", {"gone": [int, ...]}]``
  listing the seqs that were no longer held.

A subscriber introduces itself with an empty request when it connects and says `done` once it
has read `end`: a closing publisher keeps answering (and its queues draining) until every
subscriber it knows is done, for at most its end timeout, so a subscriber still catching up
loses neither the last meshes nor `end`.

The service's endpoint is announced in the topology message (`repair`), so a subscriber finds it
without configuration; a subscriber connects to its publisher's host at the announced port.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import socket
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

import msgpack
import zmq

from mmface4d_stream.stream import schema

log = logging.getLogger(__name__)

REPAIR_TAG = b"repair/1"
# Seqs one request may ask for: a subscriber further behind than this gets the newest ones.
MAX_SEQS_PER_REQUEST = 4096
_names = itertools.count()


class MeshHistory:
    """The last `capacity` published meshes, as encoded frames, keyed by `seq`."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"history capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._parts: collections.OrderedDict[int, list] = collections.OrderedDict()

    def add(self, seq: int, parts: list) -> None:
        self._parts[seq] = parts
        while len(self._parts) > self.capacity:
            self._parts.popitem(last=False)

    def get(self, seq: int) -> list | None:
        return self._parts.get(seq)

    def __len__(self) -> int:
        return len(self._parts)


class RepairService:
    """ROUTER socket answering repair requests from a `MeshHistory` (call `serve()` often).

    Args:
        url: endpoint to bind (``tcp://127.0.0.1:*`` picks a free port).
        history: the publisher's history.
        socket_setup: called with the new socket before `bind` (CURVE server options).
        context: the zmq.Context of the publisher.
    """

    def __init__(self, url: str, history: MeshHistory, context: zmq.Context, socket_setup=None):
        self.history = history
        self.dropped_by_subscriber: dict[str, int] = {}
        self.done: set[str] = set()
        self.served = 0
        self.gone = 0
        self.last_request_s = -float("inf")
        self._socket = context.socket(zmq.ROUTER)
        try:
            self._socket.setsockopt(zmq.LINGER, 0)
            # A repair reply must not block the graph either: a subscriber that stopped reading
            # its repair socket loses the reply (ROUTER drops on a full pipe).
            self._socket.setsockopt(zmq.SNDHWM, max(64, 2 * history.capacity))
            if socket_setup is not None:
                socket_setup(self._socket)
            self._socket.bind(url)
        except Exception:
            self._socket.close(linger=0)
            raise
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def serve(self, timeout_ms: int = 0) -> int:
        """Answer the pending requests (waiting up to `timeout_ms` for the first); returns how many."""
        answered = 0
        while self._socket.poll(timeout_ms if answered == 0 else 0, zmq.POLLIN):
            frames = self._socket.recv_multipart()
            answered += 1
            self.last_request_s = time.monotonic()
            if len(frames) != 3 or frames[1] != REPAIR_TAG:
                log.warning("ignored a malformed repair request (%d frames)", len(frames))
                continue
            identity = frames[0]
            try:
                request = msgpack.unpackb(frames[2], raw=False)
                name = str(request["subscriber"])[:128]
                seqs = [int(s) for s in request["seqs"]][-MAX_SEQS_PER_REQUEST:]
                dropped = int(request.get("dropped", 0))
                done = bool(request.get("done", False))
            except Exception as exc:  # msgpack raises several unrelated types for corrupt input
                log.warning("ignored a malformed repair request: %s", exc)
                continue
            self.dropped_by_subscriber[name] = max(dropped, self.dropped_by_subscriber.get(name, 0))
            if done:
                self.done.add(name)
            gone = []
            for seq in seqs:
                parts = self.history.get(seq)
                if parts is None:
                    gone.append(seq)
                    continue
                self._socket.send_multipart([identity, *parts], flags=zmq.NOBLOCK, copy=False)
                self.served += 1
            self.gone += len(gone)
            self._socket.send_multipart([identity, REPAIR_TAG, msgpack.packb({"gone": gone})], flags=zmq.NOBLOCK)
        return answered

    @property
    def catching_up(self) -> set[str]:
        """Subscribers that introduced themselves and have not read `end` yet."""
        return set(self.dropped_by_subscriber) - self.done

    def close(self) -> None:
        self._socket.close(linger=0)


def default_repair_url(publish_url: str) -> str:
    """Where the repair socket binds by default: the publish host, the next port (any port for ``*``)."""
    scheme, _, rest = publish_url.partition("://")
    if scheme == "ipc":
        return f"ipc://{rest}.repair"
    if scheme != "tcp":
        raise ValueError(f"no default repair endpoint for {publish_url}")
    host, _, port = rest.rpartition(":")
    return f"tcp://{host}:{int(port) + 1}" if port.isdigit() else f"tcp://{host}:*"


def reachable_repair_url(announced: str, publisher_url: str) -> str:
    """The announced endpoint as this subscriber reaches it: the host it used for the publisher
    (the service may have bound a wildcard), the announced port."""
    if not announced.startswith("tcp://") or not publisher_url.startswith("tcp://"):
        return announced
    port = announced.rsplit(":", 1)[1]
    host = urlsplit(publisher_url.replace("tcp://", "//", 1)).hostname or "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"tcp://{host}:{port}"


class RepairClient:
    """DEALER end of the repair channel: `fetch(seqs)` returns the meshes the publisher still holds."""

    def __init__(self, url: str, context: zmq.Context, name: str | None = None, socket_setup=None,
                 timeout_s: float = 2.0):
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{next(_names)}"
        self.timeout_s = timeout_s
        self._socket = context.socket(zmq.DEALER)
        try:
            self._socket.setsockopt(zmq.LINGER, 0)
            if socket_setup is not None:
                socket_setup(self._socket)
            self._socket.connect(url)
        except Exception:
            self._socket.close(linger=0)
            raise
        self.url = url
        self._send(seqs=[], dropped=0, done=False)  # introduce ourselves (see the module docstring)

    def _send(self, seqs: list[int], dropped: int, done: bool) -> None:
        self._socket.send_multipart([REPAIR_TAG, msgpack.packb(
            {"subscriber": self.name, "seqs": seqs, "dropped": int(dropped), "done": done})])

    def finish(self, dropped: int) -> None:
        """Tell the publisher this subscriber has read `end` (it need not wait for us any longer)."""
        self._send(seqs=[], dropped=dropped, done=True)

    def fetch(self, seqs: Sequence[int], dropped: int) -> tuple[list[schema.MeshMessage], list[int]]:
        """Ask for `seqs`; returns (meshes received, seqs the publisher no longer had).

        Seqs not answered within `timeout_s` (publisher gone or stalled) count as gone. Malformed
        replies are skipped.
        """
        seqs = list(seqs)
        self._send(seqs=seqs, dropped=dropped, done=False)
        meshes: list[schema.MeshMessage] = []
        deadline = time.monotonic() + self.timeout_s
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0 or not self._socket.poll(remaining_ms, zmq.POLLIN):
                got = {m.seq for m in meshes}
                return meshes, [s for s in seqs if s not in got]
            frames = self._socket.recv_multipart(copy=False)
            if bytes(frames[0].buffer) == REPAIR_TAG and len(frames) == 2:
                try:
                    gone = [int(s) for s in msgpack.unpackb(bytes(frames[1].buffer), raw=False)["gone"]]
                except Exception:
                    gone = []
                got = {m.seq for m in meshes}
                if not got and not gone and seqs:
                    continue  # the answer to an earlier, empty request (hello)
                return meshes, sorted(set(gone) | {s for s in seqs if s not in got})
            try:
                message = schema.decode(frames)
            except schema.WireFormatError as exc:
                log.warning("skipped a malformed repaired mesh: %s", exc)
                continue
            if isinstance(message, schema.MeshMessage) and message.seq in seqs:
                meshes.append(message)

    def close(self) -> None:
        self._socket.close(linger=0)
