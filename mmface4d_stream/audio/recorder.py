"""Microphone capture for a live session, streamed to disk and aligned to the cameras' clock.

`AudioRecorder` writes `<name>.wav` (mono float32 16 kHz, the dataset's format) block by block as
PortAudio delivers them (`formats.audio.WavStreamWriter`: a killed capture keeps every block up
to the kill). `AudioClock` places the recording on the host's monotonic clock, the clock of the
Kinect frames' system timestamps: PortAudio stamps each block with the ADC time of its first
sample on its stream clock, which the clock maps to the host clock from the callbacks' own
timing. At `close(first_frame_host_ns)` the wav is trimmed or zero-padded so that sample 0 is the
first frame's capture time, and the offset, its uncertainty and the audio clock's drift are
returned (`AudioAlignment`) for the meta json.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mmface4d_stream.errors import InputError
from mmface4d_stream.formats.audio import DATASET_RATE_HZ

log = logging.getLogger(__name__)

# How often the writer thread moves captured blocks to the file: the most a kill can lose beyond
# what PortAudio itself still held.
WRITE_PERIOD_S = 0.05


def import_sounddevice():
    """sounddevice, or an InputError saying how to get it (and PortAudio, Debian libportaudio2)."""
    from mmface4d_stream.pipeline.kinect import LIVE_EXTRA_HINT  # the `live` extra brings both

    try:
        import sounddevice
    except (ImportError, OSError) as exc:
        raise InputError(f"audio capture needs sounddevice ({LIVE_EXTRA_HINT}) and PortAudio "
                         f"(Debian: libportaudio2): {exc}") from None
    return sounddevice


class AudioAlignment(NamedTuple):
    """Where the recording sits against the cameras.

    offset_s: first frame's capture time minus the raw recording's first sample time (positive:
        audio started first, that much was trimmed; negative: zeros were prepended).
    uncertainty_s: one-sigma uncertainty of `offset_s` (clock mapping and ADC timestamp jitter
        plus one sample).
    drift_ppm: the audio sample clock's rate against the host clock, parts per million (the wav is
        not resampled; over an hour 50 ppm is 180 ms).
    """

    offset_s: float
    uncertainty_s: float
    drift_ppm: float
    samples_trimmed: int
    samples_padded: int
    timestamps: str  # "adc" (PortAudio's ADC times) or "arrival" (callback times; coarser)

    def to_meta(self) -> dict:
        return {"audio_offset_s": round(self.offset_s, 6), "audio_offset_uncertainty_s": round(self.uncertainty_s, 6),
                "audio_drift_ppm": round(self.drift_ppm, 2), "audio_samples_trimmed": self.samples_trimmed,
                "audio_samples_padded": self.samples_padded, "audio_timestamps": self.timestamps}


class AudioStart(NamedTuple):
    host_ns: float  # host monotonic time of sample 0, nanoseconds
    uncertainty_ns: float
    drift_ppm: float
    timestamps: str


class AudioClock:
    """Collects, per delivered block, where it starts (sample index) and PortAudio's times for it,
    and estimates the host time of sample 0.

    `add(first_sample, n_samples, adc_time_s, current_time_s, host_ns)`: `adc_time_s` and
    `current_time_s` on PortAudio's stream clock (`time_info.inputBufferAdcTime`, `.currentTime`),
    `host_ns` the host's monotonic clock read in the callback.
    """

    def __init__(self, rate: int):
        self.rate = int(rate)
        self._rows: list[tuple[int, int, float, float, int]] = []

    def add(self, first_sample: int, n_samples: int, adc_time_s: float, current_time_s: float, host_ns: int) -> None:
        self._rows.append((first_sample, n_samples, float(adc_time_s), float(current_time_s), int(host_ns)))

    def start(self) -> AudioStart | None:
        """The host time of sample 0 (None before any block)."""
        if not self._rows:
            return None
        rows = np.array(self._rows, dtype=np.float64)
        first, count, adc, current, host = rows.T
        sample_ns = 1e9 / self.rate
        if (adc > 0).all() and (current > 0).all():
            # The callback runs after `currentTime` was taken: the smallest difference is the mapping.
            mapping = host - current * 1e9
            offset = mapping.min()
            mapping_jitter = float(np.median(mapping) - offset)
            block_start = adc * 1e9 + offset
            timestamps = "adc"
        else:
            # No ADC times from this host API: a block arrives after its last sample was captured.
            block_start = host - count * sample_ns
            mapping_jitter = float(count.mean() * sample_ns)
            timestamps = "arrival"
        if len(rows) >= 3:
            slope, intercept = np.polyfit(first, block_start, 1)
            residual = block_start - (slope * first + intercept)
            if timestamps == "arrival":
                # Arrival only adds delay: move the line down onto the earliest blocks.
                intercept += residual.min()
            spread = float(1.4826 * np.median(np.abs(residual - np.median(residual))))
            drift_ppm = (slope / sample_ns - 1.0) * 1e6
        else:
            intercept = float(np.min(block_start - first * sample_ns))
            spread, drift_ppm = 0.0, 0.0
        uncertainty = float(np.hypot(mapping_jitter, spread) + sample_ns)
        return AudioStart(float(intercept), uncertainty, float(drift_ppm), timestamps)


def realign_wav(path: str | os.PathLike, shift_samples: int, chunk: int = 1 << 18) -> None:
    """Make sample `shift_samples` of the wav its sample 0: drop that many from the start
    (positive) or prepend that many zeros (negative). Streams through a temporary file."""
    import scipy.io.wavfile

    from mmface4d_stream.formats.audio import WavStreamWriter
    from mmface4d_stream.formats.output_files import replacing

    if shift_samples == 0:
        return
    rate, samples = scipy.io.wavfile.read(path, mmap=True)
    with replacing(path) as tmp:
        with WavStreamWriter(tmp, int(rate)) as writer:
            if shift_samples < 0:
                for start in range(0, -shift_samples, chunk):
                    writer.write(np.zeros(min(chunk, -shift_samples - start), np.float32))
            for start in range(max(shift_samples, 0), samples.shape[0], chunk):
                writer.write(np.asarray(samples[start:start + chunk], dtype=np.float32))
        del samples


class AudioRecorder:
    """Microphone → `path` (mono float32 16 kHz) via sounddevice, streamed to disk as it arrives.

    Args:
        path: the .wav to write.
        rate: samples per second.
        device: sounddevice input device (name or index), None for the default.
        sounddevice: the module to use (tests pass a stand-in); imported when None.
        host_clock_ns: the host clock the cameras' system timestamps use.
    """

    def __init__(self, path: str | os.PathLike, rate: int = DATASET_RATE_HZ, device: int | str | None = None,
                 sounddevice=None, host_clock_ns: Callable[[], int] = time.monotonic_ns):
        from mmface4d_stream.formats.audio import WavStreamWriter
        from mmface4d_stream.formats.output_files import check_output_dir

        if sounddevice is None:
            sounddevice = import_sounddevice()
        self.path = Path(path)
        self.rate = int(rate)
        self.clock = AudioClock(self.rate)
        self._host_clock_ns = host_clock_ns
        self._blocks: list[np.ndarray] = []
        self._received = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        check_output_dir(self.path.parent, create=True)
        self._writer = WavStreamWriter(self.path, self.rate)
        self._thread = threading.Thread(target=self._drain, name="audio-writer", daemon=True)
        self._thread.start()
        self._stream = sounddevice.InputStream(samplerate=self.rate, channels=1, dtype="float32", device=device,
                                               callback=self._callback)
        self._stream.start()

    def _callback(self, indata, frames, time_info, status) -> None:
        host_ns = self._host_clock_ns()
        if status:
            log.warning("audio input: %s", status)
        block = np.array(indata[:, 0], dtype=np.float32)
        with self._lock:
            self.clock.add(self._received, len(block), getattr(time_info, "inputBufferAdcTime", 0.0),
                           getattr(time_info, "currentTime", 0.0), host_ns)
            self._received += len(block)
            self._blocks.append(block)

    def _drain(self) -> None:
        while True:
            stopping = self._stop.wait(WRITE_PERIOD_S)
            with self._lock:
                blocks, self._blocks = self._blocks, []
            if blocks:
                self._writer.write(np.concatenate(blocks))
            if stopping:
                return

    def close(self, first_frame_host_ns: int | None = None) -> AudioAlignment | None:
        """Stop, finish the file and, given the first frame's host time, align sample 0 to it."""
        try:
            self._stream.stop()
            self._stream.close()
        finally:
            self._stop.set()
            self._thread.join()
            self._writer.close()
        start = self.clock.start()
        if first_frame_host_ns is None or start is None:
            return None
        offset_ns = first_frame_host_ns - start.host_ns
        shift = int(round(offset_ns * self.rate / 1e9))
        realign_wav(self.path, shift)
        alignment = AudioAlignment(offset_ns / 1e9, start.uncertainty_ns / 1e9, start.drift_ppm,
                                   max(shift, 0), max(-shift, 0), start.timestamps)
        log.info("audio aligned to the first frame: offset %.4f s ± %.4f s (%s timestamps)", alignment.offset_s,
                 alignment.uncertainty_s, alignment.timestamps)
        return alignment
