"""Live animation: microphone -> streaming model -> mesh publisher (the project's wire protocol).

Audio arrives through a sounddevice-style callback `callback(indata (n, 1) float32, frames,
time_info, status)`. `MicrophoneSource` is a `sounddevice.InputStream` calling it;
`WavFileSource` plays a wav file through the very same callback from a thread, paced like a
microphone (tests, demos, machines without one). The callback only stamps and queues the block;
the consumer loop (`LiveAnimator.run`) extracts features, steps the network and publishes each
mesh as soon as its audio plus the look-ahead has arrived, which paces publishing at the audio's
30 frames per second.

Latency: a mesh's `t_capture_ns` is when the last sample of its frame's audio
(`(k + 1) / fps` s) was captured (PortAudio's ADC time, mapped to the wall clock); latency is
publish time minus that: the look-ahead, plus the wait for the audio block that completes it,
plus computation.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import torch

from mmface4d_stream.animate.animator import AnimationModel
from mmface4d_stream.errors import InputError
from mmface4d_stream.formats.audio import DATASET_RATE_HZ

logger = logging.getLogger(__name__)

__all__ = ["LiveAnimator", "LiveResult", "MicrophoneSource", "WavFileSource"]

BLOCK_SAMPLES = 160  # 10 ms at 16 kHz: the feature hop, so a block completes a feature frame
AudioCallback = Callable[[np.ndarray, int, object, object], None]


class MicrophoneSource:
    """A sounddevice input stream (mono float32 at `rate`) feeding `callback`."""

    def __init__(self, rate: int = DATASET_RATE_HZ, device: int | str | None = None, blocksize: int = BLOCK_SAMPLES):
        self.rate, self.device, self.blocksize = int(rate), device, int(blocksize)
        self._stream = None
        self.finished = threading.Event()  # a microphone never finishes by itself

    def start(self, callback: AudioCallback) -> None:
        from mmface4d_stream.audio.recorder import import_sounddevice

        sounddevice = import_sounddevice()
        try:
            self._stream = sounddevice.InputStream(samplerate=self.rate, channels=1, dtype="float32",
                                                   blocksize=self.blocksize, latency="low", device=self.device,
                                                   callback=callback)
            self._stream.start()
        except Exception as exc:  # PortAudio reports missing devices and unsupported rates this way
            raise InputError(f"cannot open the microphone at {self.rate} Hz ({exc})") from None

    def stop(self) -> None:
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
            self._stream = None


class WavFileSource:
    """Plays a wav file through the microphone's callback, in `blocksize` blocks paced at `speed`
    x real time, with sounddevice-like `time_info` (`inputBufferAdcTime`, `currentTime`, seconds
    on `time.monotonic`'s clock). `finished` is set after the last block."""

    def __init__(self, path: str | os.PathLike, blocksize: int = BLOCK_SAMPLES, speed: float = 1.0,
                 rate: int = DATASET_RATE_HZ):
        from mmface4d_stream.animate.features import resample_to
        from mmface4d_stream.formats.audio import read_wav

        if speed <= 0:
            raise InputError(f"playback speed must be positive, got {speed}")
        audio = read_wav(path)
        self.path = Path(path)
        self.samples = resample_to(audio.samples, audio.rate, rate)
        self.rate, self.blocksize, self.speed = int(rate), int(blocksize), float(speed)
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, callback: AudioCallback) -> None:
        self._thread = threading.Thread(target=self._play, args=(callback,), name="wav-source", daemon=True)
        self._thread.start()

    def _play(self, callback: AudioCallback) -> None:
        start = time.monotonic()
        for begin in range(0, len(self.samples), self.blocksize):
            if self._stop.is_set():
                break
            block = self.samples[begin:begin + self.blocksize]
            end_s = (begin + len(block)) / self.rate / self.speed
            delay = start + end_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            now = time.monotonic()
            info = SimpleNamespace(inputBufferAdcTime=now - len(block) / self.rate / self.speed, currentTime=now)
            callback(block[:, None], len(block), info, None)
        self.finished.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)


@dataclass(frozen=True)
class LiveResult:
    """meshes: published; seconds: audio consumed; latency_ms_p50/p95/max: capture -> publish;
    meshes_per_s: publishing rate over the run."""

    meshes: int
    seconds: float
    latency_ms_p50: float
    latency_ms_p95: float
    latency_ms_max: float
    meshes_per_s: float


class LiveAnimator:
    """Drives a face from an audio source and publishes it (see the module docstring).

    Args:
        model: a trained `AnimationModel`; faces: triangles (F, 3) for the topology message
            (default: the model's).
        neutral: (V, 3) metres (default: the model's mean subject); subject: style code.
    """

    def __init__(self, model: AnimationModel, neutral: np.ndarray | None = None, subject: str | None = None,
                 faces: np.ndarray | None = None):
        self.model = model
        self.neutral = model.stats.reference if neutral is None else np.asarray(neutral, np.float32)
        self.rotation = model.pose_onto(self.neutral)
        self.subject = subject
        self.faces = model.faces if faces is None else faces
        if self.faces is None:
            raise InputError("the model holds no triangles for the topology message: pass --faces")
        self._queue: queue.Queue = queue.Queue()

    def _callback(self, indata, frames, time_info, status) -> None:
        if status:
            logger.warning("audio input: %s", status)
        now_ns = time.time_ns()
        adc = getattr(time_info, "inputBufferAdcTime", 0.0) or 0.0
        current = getattr(time_info, "currentTime", 0.0) or 0.0
        rate = self.model.feature_config.rate
        # Wall-clock time at which the block's last sample was captured.
        behind_s = (current - adc - frames / rate) if adc > 0 and current > 0 else 0.0
        self._queue.put((np.array(indata[:, 0], dtype=np.float32), now_ns - int(max(behind_s, 0.0) * 1e9)))

    def run(self, source, publisher, duration_s: float | None = None, stop: threading.Event | None = None,
            progress: bool = True) -> LiveResult:
        """Animate until the source finishes, `duration_s` of audio passed, or `stop` is set.

        Every way out sends the `end` message: reason "finished", "stopped" (`stop` set) or, on a
        KeyboardInterrupt (re-raised after it), "interrupted". The source is stopped in all cases.
        """
        from tqdm import tqdm

        from mmface4d_stream.stream.schema import StageStatus

        rate = self.model.feature_config.rate
        fps = self.model.fps
        streamer = self.model.streaming(self.subject)
        publisher.set_topology(self.faces, self.model.n_vertices)
        latencies: list[float] = []
        stop = stop or threading.Event()
        received = 0
        last_end_ns = 0
        started = time.monotonic()
        window_start, window_meshes = time.monotonic(), 0

        def publish(ready):
            nonlocal window_meshes
            for k, coeffs in ready:
                disp = self.model.displacements(coeffs[None])[0]
                frame_end = int((k + 1) * rate // fps)
                t_capture = last_end_ns - int((received - frame_end) * 1e9 / rate)
                publisher.publish_mesh(self.neutral + disp @ self.rotation.T, frame=k, t_capture_ns=t_capture,
                                       fit={"source": "audio", "lookahead_ms": self.model.config.lookahead_ms})
                latencies.append((time.time_ns() - t_capture) / 1e6)
                window_meshes += 1
                bar.update(1)

        # One network step per 10 ms block is a handful of tiny ops: intra-op threads only add
        # synchronization (15 ms per block instead of 1.2 ms with 2 threads on a busy 2-core CPU).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        source.start(self._callback)
        bar = tqdm(desc="live", unit="mesh", disable=not progress, leave=False)
        try:
            while not stop.is_set():
                try:
                    block, end_ns = self._queue.get(timeout=0.1)
                except queue.Empty:
                    if source.finished.is_set() and self._queue.empty():
                        break
                    continue
                received += len(block)
                last_end_ns = end_ns
                publish(streamer.push(block))
                now = time.monotonic()
                if now - window_start >= 1.0:
                    recent = latencies[-window_meshes:] if window_meshes else [0.0]
                    publisher.publish_status({"animate": StageStatus(window_meshes / (now - window_start),
                                                                     float(np.mean(recent)), 0)})
                    window_start, window_meshes = now, 0
                if duration_s is not None and received >= duration_s * rate:
                    break
            publish(streamer.finish())
            publisher.publish_end("finished" if not stop.is_set() else "stopped")
        except KeyboardInterrupt:
            # Ctrl-C (or SIGTERM, which the CLI turns into it): subscribers still learn the stream
            # is over, with the meshes published so far (the unfinished look-ahead is dropped).
            publisher.publish_end("interrupted")
            raise
        finally:
            source.stop()
            bar.close()
            torch.set_num_threads(threads)
        elapsed = max(time.monotonic() - started, 1e-9)
        from mmface4d_stream.pipeline.latency_budget import latency_stats

        lat = np.array(latencies) if latencies else np.zeros(1)
        stats = latency_stats(lat, None)
        return LiveResult(len(latencies), received / rate, stats["p50"], stats["p95"], float(lat.max()),
                          len(latencies) / elapsed)
