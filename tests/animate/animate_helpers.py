"""Helpers shared by the animation tests (imported by name, like tests/preview/preview_helpers.py)."""

from __future__ import annotations

import threading
from pathlib import Path

from mmface4d_stream.stream import schema


def copy_sequences(sources: list[Path], data: Path) -> None:
    """Copy sequence folders (subject/sequence/files) of a corpus under `data`, keeping subject/sequence."""
    for src in sources:
        (data / src.parent.name / src.name).mkdir(parents=True)
        for f in src.iterdir():
            (data / src.parent.name / src.name / f.name).write_bytes(f.read_bytes())


def start_listener(subscriber) -> tuple[threading.Thread, list[schema.MeshMessage], list[schema.EndMessage]]:
    """A started thread collecting `subscriber`'s meshes and end messages until the end (stop_on_end)."""
    received: list[schema.MeshMessage] = []
    ends: list[schema.EndMessage] = []

    def listen():
        for message in subscriber:
            if isinstance(message, schema.MeshMessage):
                received.append(message)
            elif isinstance(message, schema.EndMessage):
                ends.append(message)

    listener = threading.Thread(target=listen)
    listener.start()
    return listener, received, ends
