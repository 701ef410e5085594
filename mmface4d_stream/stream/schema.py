"""The msgpack wire schema of the mesh stream (docs/protocol.md).

One module (over 500 lines): the wire schema is versioned as a whole; each message type, its
encoder and its decoder change together with the version, and splitting them would scatter the
version rules.

Every message is a ZeroMQ multipart message ``[topic, header, payload, *extra]``:

- ``topic``: ASCII bytes, one of ``b"mesh"``, ``b"topology"``, ``b"status"``, ``b"end"`` (none is a
  prefix of another, so ZeroMQ's prefix subscriptions select exactly one kind each).
- ``header``: a msgpack map with string keys; its ``schema`` names the kind and version.
- ``payload``: raw little-endian array bytes (``mesh``: N×3 float32 metres; ``topology``: F×3 int32
  vertex indices) or empty (``status``, ``end``).
- ``extra``: only on ``mesh``, one JPEG per entry of the header's ``thumbnails`` list (optional
  per-camera previews). A client that does not want them reads ``parts[:3]``.

Receivers ignore header keys they do not know (a compatible addition keeps the ``/1`` schema; an
incompatible change bumps it) and reject everything else that is off: unknown topic, wrong
schema, missing key, wrong type, payload size or dtype, extra frames. `decode` raises
`WireFormatError` for all of these, so a receiver can count and skip a bad message and go on.

Times are ``time.time_ns()`` of the producer's clock (Unix epoch, nanoseconds); latency across
machines is only as good as their clock sync.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, Union

import msgpack
import numpy as np

MESH_SCHEMA = "mmface4d.mesh/1"
TOPOLOGY_SCHEMA = "mmface4d.topology/1"
STATUS_SCHEMA = "mmface4d.status/1"
END_SCHEMA = "mmface4d.end/1"

TOPIC_MESH = b"mesh"
TOPIC_TOPOLOGY = b"topology"
TOPIC_STATUS = b"status"
TOPIC_END = b"end"
TOPICS = (TOPIC_MESH, TOPIC_TOPOLOGY, TOPIC_STATUS, TOPIC_END)

VERTEX_DTYPE = "<f4"
FACE_DTYPE = "<i4"
THUMBNAIL_FORMAT = "jpeg"

# A header is a few hundred bytes; the cap keeps a hostile or corrupt one from costing memory.
MAX_HEADER_BYTES = 1 << 20
# Largest whole message a receiver accepts by default: about four BFM meshes (35709 x 12 bytes
# each) plus thumbnails. Receivers take a limit of their own (`MeshSubscriber(max_message_bytes=)`).
DEFAULT_MAX_MESSAGE_BYTES = 4 << 20
# Nested depth allowed inside `fit` and other free-form maps.
_MAX_NESTING = 4


class WireFormatError(ValueError):
    """A received message does not follow the wire schema; the receiver should skip it."""


@dataclasses.dataclass(frozen=True)
class Thumbnail:
    """One camera's preview image carried beside a mesh.

    `jpeg` is the encoded image (JPEG bytes); `width`/`height` in pixels as the producer states them.
    """

    camera: str
    jpeg: bytes
    width: int
    height: int


@dataclasses.dataclass(frozen=True)
class MeshMessage:
    """One reconstructed face mesh.

    Attributes:
        seq: the publisher's running mesh counter (0, 1, 2, ... without gaps on the sender side;
            a receiver that sees a gap lost messages).
        frame: the source frame index of the sequence.
        t_capture_ns: capture time of the frame, producer clock, ns since the Unix epoch.
        t_publish_ns: time the publisher sent it, same clock.
        vertices: float32 array (N, 3), metres, in the reference (center) camera's frame.
            Arrays made by `decode` are read-only views of the received bytes.
        topology_id: names the triangle list (`TopologyMessage`) these vertices index into.
        smoothed: whether the temporal smoother has been applied.
        cameras: identifiers of the cameras that contributed to the fit.
        fit: free-form fit diagnostics (str keys; numbers, strings, bools, None, lists, maps).
        thumbnails: optional per-camera JPEG previews.
    """

    seq: int
    frame: int
    t_capture_ns: int
    t_publish_ns: int
    vertices: np.ndarray
    topology_id: str
    smoothed: bool = False
    cameras: tuple[str, ...] = ()
    fit: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    thumbnails: tuple[Thumbnail, ...] = ()

    @property
    def n_vertices(self) -> int:
        return int(self.vertices.shape[0])


@dataclasses.dataclass(frozen=True)
class TopologyMessage:
    """The triangle list shared by the meshes that carry the same `topology_id`.

    `faces` is int32 (F, 3) of vertex indices in [0, n_vertices). `repair`: the endpoint where
    missed meshes can be requested (`stream.repair`), when the publisher keeps a history.
    """

    topology_id: str
    n_vertices: int
    faces: np.ndarray
    repair: str | None = None

    @property
    def n_faces(self) -> int:
        return int(self.faces.shape[0])


@dataclasses.dataclass(frozen=True)
class StageStatus:
    """Throughput of one pipeline stage over the last reporting period.

    fps: items per second; latency_ms: time an item spends in the stage (or from capture to the
    stage's output, as the stage defines it), milliseconds; drops: items dropped so far (cumulative).
    """

    fps: float
    latency_ms: float
    drops: int


@dataclasses.dataclass(frozen=True)
class StatusMessage:
    """Periodic (about 1 Hz) health report: per-stage fps, latency and drops.

    Optional (a compatible addition): state, the graph's phase ("warming", "ready" before the
    capture clock starts, "running"); budget, the live latency budget as a plain map
    (`pipeline.latency_budget.LatencyBudget.report()`: max_latency_ms, per-stage and capture →
    publish p50/p95 ms, drops by cause, the stage over the budget).
    """

    seq: int
    t_publish_ns: int
    stages: Mapping[str, StageStatus]
    state: str | None = None
    budget: Mapping[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class EndMessage:
    """The sequence is finished; no more meshes follow from this publisher run.

    last_seq: `seq` of the last mesh published (-1 if none), so a receiver can count trailing
    losses; n_meshes: meshes published; reason: "finished", "interrupted" (the graph on Ctrl-C),
    "stopped" (a live animation ended) or "error".
    """

    t_publish_ns: int
    last_seq: int
    n_meshes: int
    reason: str = "finished"


Message = Union[MeshMessage, TopologyMessage, StatusMessage, EndMessage]


# ----------------------------------------------------------------------------------- encoding


def _packb(header: Mapping[str, Any]) -> bytes:
    return msgpack.packb(header, use_bin_type=True)


def vertices_to_payload(vertices: np.ndarray) -> bytes:
    """Check (N, 3) finite-shape float vertices and return their little-endian float32 bytes."""
    vertices = np.asarray(vertices)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must have shape (N, 3), got {vertices.shape}")
    if not np.issubdtype(vertices.dtype, np.floating):
        raise ValueError(f"vertices must be floating point metres, got dtype {vertices.dtype}")
    return np.ascontiguousarray(vertices, dtype=VERTEX_DTYPE).tobytes()


def faces_to_payload(faces: np.ndarray, n_vertices: int) -> bytes:
    """Check (F, 3) integer faces indexing [0, n_vertices) and return their int32 LE bytes."""
    faces = np.asarray(faces)
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must have shape (F, 3), got {faces.shape}")
    if not np.issubdtype(faces.dtype, np.integer):
        raise ValueError(f"faces must be integer vertex indices, got dtype {faces.dtype}")
    if faces.size and (faces.min() < 0 or faces.max() >= n_vertices):
        raise ValueError(
            f"face indices must lie in [0, {n_vertices}), got [{faces.min()}, {faces.max()}]"
        )
    return np.ascontiguousarray(faces, dtype=FACE_DTYPE).tobytes()


def encode_mesh(message: MeshMessage) -> list[bytes]:
    """Multipart frames ``[b"mesh", header, vertices, *jpegs]`` for `message`."""
    payload = vertices_to_payload(message.vertices)
    header = {
        "schema": MESH_SCHEMA,
        "seq": int(message.seq),
        "frame": int(message.frame),
        "t_capture_ns": int(message.t_capture_ns),
        "t_publish_ns": int(message.t_publish_ns),
        "n_vertices": int(message.vertices.shape[0]),
        "dtype": VERTEX_DTYPE,
        "topology_id": str(message.topology_id),
        "smoothed": bool(message.smoothed),
        "cameras": [str(c) for c in message.cameras],
        "fit": _plain(dict(message.fit), "fit"),
    }
    parts = [TOPIC_MESH, b"", payload]
    if message.thumbnails:
        header["thumbnails"] = [
            {
                "camera": str(t.camera),
                "format": THUMBNAIL_FORMAT,
                "width": int(t.width),
                "height": int(t.height),
                "n_bytes": len(t.jpeg),
            }
            for t in message.thumbnails
        ]
        parts.extend(bytes(t.jpeg) for t in message.thumbnails)
    parts[1] = _packb(header)
    return parts


def encode_topology(message: TopologyMessage) -> list[bytes]:
    """Multipart frames ``[b"topology", header, faces]`` for `message`."""
    payload = faces_to_payload(message.faces, message.n_vertices)
    header = {
        "schema": TOPOLOGY_SCHEMA,
        "topology_id": str(message.topology_id),
        "n_vertices": int(message.n_vertices),
        "n_faces": int(np.asarray(message.faces).shape[0]),
        "dtype": FACE_DTYPE,
    }
    if message.repair is not None:
        header["repair"] = str(message.repair)
    return [TOPIC_TOPOLOGY, _packb(header), payload]


def encode_status(message: StatusMessage) -> list[bytes]:
    """Multipart frames ``[b"status", header, b""]`` for `message`."""
    stages = {}
    for name, stage in message.stages.items():
        if isinstance(stage, Mapping):
            stage = StageStatus(**stage)
        stages[str(name)] = {
            "fps": float(stage.fps),
            "latency_ms": float(stage.latency_ms),
            "drops": int(stage.drops),
        }
    header = {
        "schema": STATUS_SCHEMA,
        "seq": int(message.seq),
        "t_publish_ns": int(message.t_publish_ns),
        "stages": stages,
    }
    if message.state is not None:
        header["state"] = str(message.state)
    if message.budget is not None:
        header["budget"] = _plain(dict(message.budget), "budget")
    return [TOPIC_STATUS, _packb(header), b""]


def encode_end(message: EndMessage) -> list[bytes]:
    """Multipart frames ``[b"end", header, b""]`` for `message`."""
    header = {
        "schema": END_SCHEMA,
        "t_publish_ns": int(message.t_publish_ns),
        "last_seq": int(message.last_seq),
        "n_meshes": int(message.n_meshes),
        "reason": str(message.reason),
    }
    return [TOPIC_END, _packb(header), b""]


def encode(message: Message) -> list[bytes]:
    """Multipart frames for any message type."""
    if isinstance(message, MeshMessage):
        return encode_mesh(message)
    if isinstance(message, TopologyMessage):
        return encode_topology(message)
    if isinstance(message, StatusMessage):
        return encode_status(message)
    if isinstance(message, EndMessage):
        return encode_end(message)
    raise TypeError(f"not a wire message: {type(message).__name__}")


def _plain(value: Any, where: str, depth: int = 0) -> Any:
    """`value` converted to msgpack-safe plain types (numpy scalars/arrays become Python ones)."""
    if depth > _MAX_NESTING:
        raise ValueError(f"{where} is nested deeper than {_MAX_NESTING} levels")
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return _plain(value.tolist(), where, depth)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where} keys must be strings, got {key!r}")
            out[key] = _plain(item, f"{where}.{key}", depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(item, where, depth + 1) for item in value]
    raise ValueError(f"{where} holds a {type(value).__name__}, which the wire format cannot carry")


# ----------------------------------------------------------------------------------- decoding


def _frame_bytes(part: Any) -> bytes | memoryview:
    if isinstance(part, (bytes, bytearray, memoryview)):
        return part
    buffer = getattr(part, "buffer", None)  # zmq.Frame received with copy=False
    if buffer is not None:
        return buffer
    raise WireFormatError(f"message part is {type(part).__name__}, expected bytes")


def _unpack_header(raw: bytes | memoryview) -> dict:
    if len(raw) > MAX_HEADER_BYTES:
        raise WireFormatError(f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for corrupt input
        raise WireFormatError(f"header is not valid msgpack ({type(exc).__name__}: {exc})") from None
    if not isinstance(header, dict):
        raise WireFormatError(f"header must be a msgpack map, got {type(header).__name__}")
    return header


def _get(header: dict, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    if key not in header:
        raise WireFormatError(f"{what} header lacks {key!r}")
    value = header[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int subclass; an int field holding True is malformed.
    if isinstance(value, bool) and bool not in kinds:
        raise WireFormatError(f"{what} header {key!r} must be {_names(kinds)}, got bool")
    if not isinstance(value, kinds):
        raise WireFormatError(
            f"{what} header {key!r} must be {_names(kinds)}, got {type(value).__name__}"
        )
    return value


def _names(kinds: tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in kinds)


def _get_count(header: dict, key: str, what: str, minimum: int = 0) -> int:
    value = _get(header, key, int, what)
    if value < minimum:
        raise WireFormatError(f"{what} header {key!r} must be >= {minimum}, got {value}")
    return value


def _get_finite(header: dict, key: str, what: str) -> float:
    value = float(_get(header, key, (int, float), what))
    if not math.isfinite(value):
        raise WireFormatError(f"{what} header {key!r} must be finite, got {value}")
    return value


def _check_schema(header: dict, expected: str) -> None:
    schema = header.get("schema")
    if schema != expected:
        raise WireFormatError(f"schema {schema!r} where {expected!r} was expected")


def _check_parts(parts: Sequence, n: int, what: str) -> None:
    if len(parts) != n:
        raise WireFormatError(f"{what} message has {len(parts)} parts, expected {n}")


def _decode_array(payload, dtype: str, count: int, what: str) -> np.ndarray:
    expected = count * 3 * np.dtype(dtype).itemsize
    if len(payload) != expected:
        raise WireFormatError(
            f"{what} payload is {len(payload)} bytes, expected {expected} ({count}x3 {dtype})"
        )
    return np.frombuffer(payload, dtype=dtype).reshape(count, 3)


def decode_mesh(parts: Sequence) -> MeshMessage:
    header = _unpack_header(_frame_bytes(parts[1]))
    _check_schema(header, MESH_SCHEMA)
    what = "mesh"
    thumb_specs = header.get("thumbnails", [])
    if not isinstance(thumb_specs, list):
        raise WireFormatError("mesh header 'thumbnails' must be a list")
    _check_parts(parts, 3 + len(thumb_specs), what)
    if _get(header, "dtype", str, what) != VERTEX_DTYPE:
        raise WireFormatError(f"mesh dtype {header['dtype']!r}, expected {VERTEX_DTYPE!r}")
    n_vertices = _get_count(header, "n_vertices", what)
    vertices = _decode_array(_frame_bytes(parts[2]), VERTEX_DTYPE, n_vertices, what)
    if not np.isfinite(vertices).all():
        bad = int((~np.isfinite(vertices)).any(axis=-1).sum()) if vertices.ndim == 2 else -1
        raise WireFormatError(f"mesh has {bad} vertices that are NaN or inf")
    cameras = _get(header, "cameras", list, what)
    if not all(isinstance(c, str) for c in cameras):
        raise WireFormatError("mesh header 'cameras' must be a list of strings")
    fit = _get(header, "fit", dict, what)
    thumbnails = []
    for spec, jpeg in zip(thumb_specs, parts[3:]):
        if not isinstance(spec, dict):
            raise WireFormatError("mesh thumbnail entries must be maps")
        if _get(spec, "format", str, "thumbnail") != THUMBNAIL_FORMAT:
            raise WireFormatError(f"thumbnail format {spec['format']!r}, expected 'jpeg'")
        jpeg = bytes(_frame_bytes(jpeg))
        if _get_count(spec, "n_bytes", "thumbnail") != len(jpeg):
            raise WireFormatError(
                f"thumbnail is {len(jpeg)} bytes, header says {spec['n_bytes']}"
            )
        thumbnails.append(
            Thumbnail(
                camera=_get(spec, "camera", str, "thumbnail"),
                jpeg=jpeg,
                width=_get_count(spec, "width", "thumbnail"),
                height=_get_count(spec, "height", "thumbnail"),
            )
        )
    return MeshMessage(
        seq=_get_count(header, "seq", what),
        frame=_get_count(header, "frame", what),
        t_capture_ns=_get(header, "t_capture_ns", int, what),
        t_publish_ns=_get(header, "t_publish_ns", int, what),
        vertices=vertices,
        topology_id=_get(header, "topology_id", str, what),
        smoothed=_get(header, "smoothed", bool, what),
        cameras=tuple(cameras),
        fit=fit,
        thumbnails=tuple(thumbnails),
    )


def decode_topology(parts: Sequence) -> TopologyMessage:
    what = "topology"
    _check_parts(parts, 3, what)
    header = _unpack_header(_frame_bytes(parts[1]))
    _check_schema(header, TOPOLOGY_SCHEMA)
    if _get(header, "dtype", str, what) != FACE_DTYPE:
        raise WireFormatError(f"topology dtype {header['dtype']!r}, expected {FACE_DTYPE!r}")
    n_vertices = _get_count(header, "n_vertices", what)
    n_faces = _get_count(header, "n_faces", what)
    faces = _decode_array(_frame_bytes(parts[2]), FACE_DTYPE, n_faces, what)
    if faces.size and (faces.min() < 0 or faces.max() >= n_vertices):
        raise WireFormatError(f"topology face indices fall outside [0, {n_vertices})")
    repair = header.get("repair")
    if repair is not None and not isinstance(repair, str):
        raise WireFormatError(f"topology header 'repair' must be str, got {type(repair).__name__}")
    return TopologyMessage(
        topology_id=_get(header, "topology_id", str, what), n_vertices=n_vertices, faces=faces, repair=repair
    )


def decode_status(parts: Sequence) -> StatusMessage:
    what = "status"
    _check_parts(parts, 3, what)
    header = _unpack_header(_frame_bytes(parts[1]))
    _check_schema(header, STATUS_SCHEMA)
    if len(_frame_bytes(parts[2])):
        raise WireFormatError("status payload must be empty")
    raw_stages = _get(header, "stages", dict, what)
    stages = {}
    for name, raw in raw_stages.items():
        if not isinstance(raw, dict):
            raise WireFormatError(f"status stage {name!r} must be a map")
        where = f"status stage {name!r}"
        stages[name] = StageStatus(
            fps=_get_finite(raw, "fps", where),
            latency_ms=_get_finite(raw, "latency_ms", where),
            drops=_get_count(raw, "drops", where),
        )
    state = header.get("state")
    if state is not None and not isinstance(state, str):
        raise WireFormatError(f"status header 'state' must be str, got {type(state).__name__}")
    budget = header.get("budget")
    if budget is not None and not isinstance(budget, dict):
        raise WireFormatError(f"status header 'budget' must be a map, got {type(budget).__name__}")
    return StatusMessage(
        seq=_get_count(header, "seq", what),
        t_publish_ns=_get(header, "t_publish_ns", int, what),
        stages=stages,
        state=state,
        budget=budget,
    )


def decode_end(parts: Sequence) -> EndMessage:
    what = "end"
    _check_parts(parts, 3, what)
    header = _unpack_header(_frame_bytes(parts[1]))
    _check_schema(header, END_SCHEMA)
    if len(_frame_bytes(parts[2])):
        raise WireFormatError("end payload must be empty")
    return EndMessage(
        t_publish_ns=_get(header, "t_publish_ns", int, what),
        last_seq=_get_count(header, "last_seq", what, minimum=-1),
        n_meshes=_get_count(header, "n_meshes", what),
        reason=_get(header, "reason", str, what),
    )


_DECODERS = {
    TOPIC_MESH: decode_mesh,
    TOPIC_TOPOLOGY: decode_topology,
    TOPIC_STATUS: decode_status,
    TOPIC_END: decode_end,
}


def decode(parts: Sequence, max_message_bytes: int | None = DEFAULT_MAX_MESSAGE_BYTES) -> Message:
    """The typed message of a received multipart message.

    `parts` are bytes or `zmq.Frame`s. Raises `WireFormatError` for anything malformed, including
    a message larger than `max_message_bytes` (None: no limit) and a mesh with non-finite vertices.
    """
    if len(parts) < 3:
        raise WireFormatError(f"message has {len(parts)} parts, expected at least 3")
    if max_message_bytes is not None:
        size = sum(len(_frame_bytes(part)) for part in parts)
        if size > max_message_bytes:
            raise WireFormatError(f"message of {size} bytes exceeds the limit of {max_message_bytes}")
    topic = bytes(_frame_bytes(parts[0]))
    decoder = _DECODERS.get(topic)
    if decoder is None:
        raise WireFormatError(f"unknown topic {topic[:32]!r}")
    return decoder(parts)
