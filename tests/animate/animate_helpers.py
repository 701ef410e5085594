"""Helpers shared by the animation tests (imported by name, like tests/preview/preview_helpers.py)."""

from __future__ import annotations

import threading
from pathlib import Path

from mmface4d_stream.stream import schema

RATE = 16000


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


def play_to_subscriber(model, speech, tmp_path: Path):
    """`speech` (16 kHz samples) written to a wav and played through `LiveAnimator(model)`'s microphone
    callback path to a publisher with one subscriber: (run result, meshes received, end messages, subscriber)."""
    from mmface4d_stream.animate.live import LiveAnimator, WavFileSource
    from mmface4d_stream.formats.audio import write_wav
    from mmface4d_stream.stream.publisher import MeshPublisher
    from mmface4d_stream.stream.subscriber import MeshSubscriber

    wav = tmp_path / "speech.wav"
    write_wav(wav, speech, RATE)
    url = f"ipc://{tmp_path}/animate.sock"
    with MeshPublisher(url) as publisher, MeshSubscriber(url, timeout_s=5.0) as subscriber:
        assert publisher.wait_for_subscribers(1, timeout_s=5.0)
        listener, received, ends = start_listener(subscriber)
        result = LiveAnimator(model).run(WavFileSource(wav), publisher, progress=False)
        listener.join(timeout=10.0)
    return result, received, ends, subscriber
