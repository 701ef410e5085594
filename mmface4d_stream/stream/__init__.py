"""ZeroMQ mesh stream: the msgpack wire schema, `MeshPublisher` (XPUB) and `MeshSubscriber` (SUB).

See `schema` for the message layout and docs/protocol.md for the whole protocol;
`examples/subscriber_minimal.py` shows a client that needs only zmq, msgpack and numpy.
"""

from mmface4d_stream.stream.curve import is_loopback_endpoint
from mmface4d_stream.stream.publisher import DEFAULT_URL, MeshPublisher, PublisherStats
from mmface4d_stream.stream.schema import (
    EndMessage,
    MeshMessage,
    StageStatus,
    StatusMessage,
    Thumbnail,
    TopologyMessage,
    WireFormatError,
    decode,
    encode,
)
from mmface4d_stream.stream.status import StageMeter
from mmface4d_stream.stream.subscriber import MeshSubscriber, SubscriberStats

__all__ = [
    "DEFAULT_URL",
    "EndMessage",
    "MeshMessage",
    "MeshPublisher",
    "MeshSubscriber",
    "PublisherStats",
    "StageMeter",
    "StageStatus",
    "StatusMessage",
    "SubscriberStats",
    "Thumbnail",
    "TopologyMessage",
    "WireFormatError",
    "decode",
    "encode",
    "is_loopback_endpoint",
]
