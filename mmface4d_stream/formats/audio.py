"""Sequence audio `<seq>.wav`: mono 16 kHz float32 (IEEE float WAVE, which Python's `wave` cannot read)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.io.wavfile

from mmface4d_stream.errors import InputError

DATASET_RATE_HZ = 16000


class Audio(NamedTuple):
    samples: np.ndarray  # float32 (S,), mono, nominally in [-1, 1]
    rate: int  # samples per second


def read_wav(path: str | os.PathLike) -> Audio:
    """Read a WAVE file as mono float32 (integer PCM is scaled to [-1, 1]; channels are averaged)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    try:
        rate, data = scipy.io.wavfile.read(path, mmap=False)
    except (ValueError, EOFError) as exc:
        raise InputError(f"not a readable WAVE file ({exc})", path) from None
    if np.issubdtype(data.dtype, np.integer):
        data = data.astype(np.float32) / float(np.iinfo(data.dtype).max)
    data = data.astype(np.float32, copy=False)
    if data.ndim == 2:
        data = data.mean(axis=1, dtype=np.float32)
    return Audio(data, int(rate))


def write_wav(path: str | os.PathLike, samples: np.ndarray, rate: int = DATASET_RATE_HZ) -> None:
    """Write mono float32 samples (S,) as an IEEE-float WAVE, via a temporary file."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"expected mono samples of shape (S,), got {samples.shape}")
    if not np.isfinite(samples).all():
        raise ValueError("audio samples contain NaN or inf")
    from mmface4d_stream.formats.output_files import replacing

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        scipy.io.wavfile.write(tmp, int(rate), samples)


def load_audio_16k(path: str | os.PathLike) -> np.ndarray:
    """The wav as mono float32 (S,) at 16 kHz (channels averaged, resampled if needed)."""
    try:
        samples, rate = read_wav(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read audio ({exc})", path=path) from None
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 2:
        samples = samples.mean(axis=1, dtype=np.float32)
    return resample(samples, rate, DATASET_RATE_HZ)


def resample(samples: np.ndarray, rate: int, target: int = DATASET_RATE_HZ) -> np.ndarray:
    """Polyphase resampling of mono (S,) samples from `rate` to `target` Hz, float32 out (computed in
    float64; a float32 copy when the rates are equal)."""
    if int(rate) == int(target):
        return np.asarray(samples, dtype=np.float32)
    from scipy.signal import resample_poly

    g = math.gcd(int(rate), int(target))
    return resample_poly(np.asarray(samples, dtype=np.float64), int(target) // g, int(rate) // g).astype(np.float32)


_WAVE_FORMAT_IEEE_FLOAT = 3
_HEADER_BYTES = 44  # RIFF header, 16-byte fmt chunk, data chunk header


class WavStreamWriter:
    """Append mono float32 blocks to an IEEE-float WAVE file as they arrive (a recording).

    The header's sizes are rewritten after every block and the bytes handed to the OS at once, so
    a process killed at any moment leaves a valid file holding every block written before (the
    block being written at the kill may be cut to whole samples). A context manager.

    Args:
        path: the .wav to write (its folder must exist).
        rate: samples per second (the dataset: 16000).
    """

    def __init__(self, path: str | os.PathLike, rate: int = DATASET_RATE_HZ):
        self.path = Path(path)
        self.rate = int(rate)
        self.samples_written = 0
        self._file = open(self.path, "wb")
        self._file.write(self._header(0))
        self._file.flush()

    def _header(self, n_samples: int) -> bytes:
        data_bytes = 4 * n_samples
        return b"".join([
            b"RIFF", (36 + data_bytes).to_bytes(4, "little"), b"WAVE",
            b"fmt ", (16).to_bytes(4, "little"), _WAVE_FORMAT_IEEE_FLOAT.to_bytes(2, "little"),
            (1).to_bytes(2, "little"), self.rate.to_bytes(4, "little"), (4 * self.rate).to_bytes(4, "little"),
            (4).to_bytes(2, "little"), (32).to_bytes(2, "little"),
            b"data", data_bytes.to_bytes(4, "little"),
        ])

    def write(self, samples: np.ndarray) -> None:
        """Append float (S,) samples; the header then counts them."""
        block = np.ascontiguousarray(samples, dtype="<f4").reshape(-1)
        if block.size == 0:
            return
        self._file.seek(0, os.SEEK_END)
        self._file.write(block.tobytes())
        self.samples_written += block.size
        self._file.seek(0)
        self._file.write(self._header(self.samples_written))
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> "WavStreamWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
