"""A minimal mesh-stream client: only zmq, msgpack and numpy (protocol: docs/protocol.md).

Run `python examples/subscriber_minimal.py [tcp://127.0.0.1:5555]` while a graph publishes.
"""
import sys

import msgpack
import numpy as np
import zmq

socket = zmq.Context().socket(zmq.SUB)
socket.connect(sys.argv[1] if len(sys.argv) > 1 else "tcp://127.0.0.1:5555")
for topic in (b"mesh", b"topology", b"end"):
    socket.setsockopt(zmq.SUBSCRIBE, topic)
faces = None
while True:
    topic, header, payload, *_thumbnails = socket.recv_multipart()
    header = msgpack.unpackb(header)
    if topic == b"topology" and header["schema"] == "mmface4d.topology/1":
        faces = np.frombuffer(payload, "<i4").reshape(header["n_faces"], 3)
    elif topic == b"mesh" and header["schema"] == "mmface4d.mesh/1":
        vertices = np.frombuffer(payload, "<f4").reshape(header["n_vertices"], 3)  # metres
        print(f"frame {header['frame']}: {len(vertices)} vertices, centre {vertices.mean(0).round(3)},"
              f" {0 if faces is None else len(faces)} faces")
    elif topic == b"end":
        break
