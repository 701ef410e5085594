"""The microphone's wav is on disk as it is captured and aligned to the cameras' first frame (audio/recorder.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

from mmface4d_stream.audio.recorder import AudioClock, AudioRecorder
from mmface4d_stream.formats.audio import read_wav

REPO = Path(__file__).resolve().parents[2]
RATE = 16_000
BLOCK = 160  # 10 ms
FPS = 30


class _ReplayedMicrophone:
    """A sounddevice stand-in: delivers a known signal in real time, block by block, stamping each
    block with its ADC time on a stream clock offset from the host clock (as PortAudio does)."""

    STREAM_CLOCK_OFFSET_S = -1234.5
    LATENCY_S = 0.01

    def __init__(self, signal_at, with_adc_times=True):
        self.signal_at = signal_at  # host capture time of sample i (s) -> value
        self.with_adc_times = with_adc_times
        self.t0 = None

    def module(self):
        mic = self

        class InputStream:
            def __init__(self, samplerate, channels, dtype, device, callback):
                self.callback = callback
                self.stop_event = threading.Event()

            def start(self):
                mic.t0 = time.monotonic() + 0.02
                self.thread = threading.Thread(target=self.run, daemon=True)
                self.thread.start()

            def run(self):
                k = 0
                while not self.stop_event.is_set():
                    adc = mic.t0 + k * BLOCK / RATE
                    delay = adc + BLOCK / RATE + mic.LATENCY_S - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    times = adc + np.arange(BLOCK) / RATE
                    info = types.SimpleNamespace(
                        inputBufferAdcTime=adc + mic.STREAM_CLOCK_OFFSET_S if mic.with_adc_times else 0.0,
                        currentTime=time.monotonic() + mic.STREAM_CLOCK_OFFSET_S if mic.with_adc_times else 0.0)
                    self.callback(mic.signal_at(times)[:, None].astype(np.float32), BLOCK, info, None)
                    k += 1

            def stop(self):
                self.stop_event.set()
                self.thread.join()

            def close(self):
                pass

        return types.SimpleNamespace(InputStream=InputStream)


@pytest.mark.parametrize("with_adc_times", [True, False])
def test_clap_lands_on_its_frame(tmp_path, with_adc_times):
    """A clap heard and seen at once: after alignment the click is within one frame of the bright frame."""
    first_frame_delay_s, clap_frame = 0.25, 12
    state = {}

    def signal_at(t):
        rng = np.random.default_rng(int(t[0] * 1e6) % 2**32)
        out = rng.normal(0, 0.005, t.shape)
        clap = state.get("clap_s")
        if clap is not None:
            out[np.abs(t - clap) < 0.002] = 0.9  # a 4 ms click
        return out

    mic = _ReplayedMicrophone(signal_at, with_adc_times)
    recorder = AudioRecorder(tmp_path / "take.wav", RATE, sounddevice=mic.module())
    # The cameras (host clock, system timestamps): first frame after 0.25 s, a flash at frame 12.
    first_frame_ns = int((mic.t0 + first_frame_delay_s) * 1e9)
    frame_times_ns = first_frame_ns + (np.arange(40) * 1e9 / FPS).astype(np.int64)
    frames = np.zeros((40, 8, 8), np.uint8)
    frames[clap_frame] = 255
    state["clap_s"] = frame_times_ns[clap_frame] / 1e9
    time.sleep(first_frame_delay_s + 40 / FPS + 0.1)
    alignment = recorder.close(first_frame_host_ns=first_frame_ns)

    samples, rate = read_wav(tmp_path / "take.wav")
    heard_s = int(np.argmax(np.abs(samples))) / rate
    seen_s = int(np.argmax(frames.reshape(40, -1).mean(axis=1))) / FPS
    assert abs(heard_s - seen_s) < 1 / FPS, (heard_s, seen_s)
    assert abs(alignment.offset_s - first_frame_delay_s) < 1 / FPS
    assert alignment.samples_trimmed == pytest.approx(first_frame_delay_s * RATE, abs=RATE / FPS)
    assert alignment.uncertainty_s < 1 / FPS
    assert alignment.timestamps == ("adc" if with_adc_times else "arrival")
    meta = alignment.to_meta()
    assert set(meta) >= {"audio_offset_s", "audio_offset_uncertainty_s"}


def test_clock_estimates_drift_and_maps_the_stream_clock():
    clock = AudioClock(RATE)
    drift = 40e-6
    for k in range(200):
        first = k * BLOCK
        adc = 50.0 + first / RATE * (1 + drift)  # stream clock
        current = adc + BLOCK / RATE + 0.003
        host_ns = int((current + 1000.0) * 1e9) + (k % 7) * 20_000  # callbacks run 0..120 µs late
        clock.add(first, BLOCK, adc, current, host_ns)
    start = clock.start()
    assert abs(start.host_ns - 1050.0e9) < 0.2e6  # within 0.2 ms
    assert start.drift_ppm == pytest.approx(40, abs=1)


def test_a_killed_capture_keeps_its_audio(tmp_path):
    code = ("import os, signal, sys, numpy as np\n"
            "from mmface4d_stream.formats.audio import WavStreamWriter\n"
            "w = WavStreamWriter(sys.argv[1])\n"
            "for k in range(50): w.write(np.full(160, k / 100, np.float32))\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.wav")], timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert done.returncode == -signal.SIGKILL
    samples, rate = read_wav(tmp_path / "a.wav")
    assert rate == RATE and samples.shape == (50 * 160,)
    assert samples[-1] == pytest.approx(0.49)
