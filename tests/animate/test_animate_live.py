"""The live path: a wav played through the microphone's callback -> meshes a subscriber receives."""

from __future__ import annotations

import numpy as np
import pytest

from mmface4d_stream.animate.animator import AnimationModel
from mmface4d_stream.animate.live import LiveAnimator, MicrophoneSource, WavFileSource
from mmface4d_stream.formats.audio import read_wav, write_wav
from mmface4d_stream.stream.publisher import MeshPublisher
from mmface4d_stream.stream.subscriber import MeshSubscriber

from animate_helpers import play_to_subscriber, start_listener

RATE = 16000


def test_wav_through_the_microphone_path_reaches_a_subscriber(trained_model, synthetic_corpus, tmp_path):
    model = AnimationModel.load(trained_model)
    speech = read_wav(sorted(synthetic_corpus[1].rglob("*.wav"))[0]).samples[: 2 * RATE]
    result, received, ends, subscriber = play_to_subscriber(model, speech, tmp_path)
    assert result.meshes == 60 and result.seconds == pytest.approx(2.0)
    assert [m.frame for m in received] == list(range(60))
    assert len(ends) == 1 and subscriber.stats.dropped == 0
    assert subscriber.topology is not None and subscriber.topology.n_vertices == model.n_vertices
    # Paced by the audio: about 30 meshes per second, well inside the latency budget.
    assert 20 < result.meshes_per_s < 40
    assert result.latency_ms_p50 <= 150.0
    lat = [(m.t_publish_ns - m.t_capture_ns) / 1e6 for m in received]
    assert np.median(lat) >= model.config.lookahead_ms - 12  # it waited for the look-ahead audio
    # The meshes are the offline model's, on the mean subject's face.
    offline = model.stats.reference + model.displacements(model.coefficients(speech, RATE))
    np.testing.assert_allclose(np.stack([m.vertices for m in received]), offline, atol=1e-5)


def test_microphone_source_reports_a_missing_device_as_input_error(monkeypatch):
    import sounddevice

    from mmface4d_stream.errors import InputError

    class NoDevice:
        def __init__(self, **kwargs):
            raise sounddevice.PortAudioError("Error querying device -1")

    monkeypatch.setattr(sounddevice, "InputStream", NoDevice)
    with pytest.raises(InputError, match="cannot open the microphone at 16000 Hz"):
        MicrophoneSource().start(lambda *a: None)


def test_microphone_source_feeds_the_same_callback(monkeypatch):
    """The InputStream gets the animator's callback; what it delivers is animated like the wav."""
    import sounddevice

    streams = []

    class FakeStream:
        def __init__(self, **kwargs):
            self.kwargs = kwargs
            streams.append(self)

        def start(self):
            pass

        def stop(self):
            pass

        def close(self):
            pass

    monkeypatch.setattr(sounddevice, "InputStream", FakeStream)
    calls = []
    source = MicrophoneSource()
    source.start(lambda *args: calls.append(args))
    kwargs = streams[0].kwargs
    assert kwargs["samplerate"] == 16000 and kwargs["channels"] == 1 and kwargs["dtype"] == "float32"
    assert kwargs["blocksize"] == 160
    kwargs["callback"](np.zeros((160, 1), np.float32), 160, None, None)
    assert len(calls) == 1
    source.stop()


def test_ctrl_c_publishes_end_interrupted(trained_model, synthetic_corpus, tmp_path):
    """A KeyboardInterrupt (Ctrl-C, or SIGTERM through the CLI) in the consumer loop still sends `end`."""
    import queue

    model = AnimationModel.load(trained_model)
    speech = read_wav(sorted(synthetic_corpus[1].rglob("*.wav"))[0]).samples[: 2 * RATE]
    wav = tmp_path / "speech.wav"
    write_wav(wav, speech, RATE)

    class InterruptedQueue(queue.Queue):
        """Ctrl-C arrives while the loop waits for its 20th audio block."""

        def get(self, *args, **kwargs):
            self.taken = getattr(self, "taken", 0) + 1
            if self.taken == 20:
                raise KeyboardInterrupt
            return super().get(*args, **kwargs)

    url = f"ipc://{tmp_path}/animate.sock"
    source = WavFileSource(wav)
    with MeshPublisher(url) as publisher, MeshSubscriber(url, timeout_s=5.0) as subscriber:
        assert publisher.wait_for_subscribers(1, timeout_s=5.0)
        listener, received, ends = start_listener(subscriber)
        animator = LiveAnimator(model)
        animator._queue = InterruptedQueue()
        with pytest.raises(KeyboardInterrupt):
            animator.run(source, publisher, progress=False)
        listener.join(timeout=10.0)
    assert not listener.is_alive()
    assert len(ends) == 1 and ends[0].reason == "interrupted"
    assert ends[0].n_meshes == len(received) < 60
    assert source._stop.is_set()  # the source was stopped too
