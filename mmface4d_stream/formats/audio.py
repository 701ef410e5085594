"""Sequence audio `<seq>.wav`: mono 16 kHz float32 (IEEE float WAVE, which Python's `wave` cannot read)."""

from __future__ import annotations

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    scipy.io.wavfile.write(tmp, int(rate), samples)
    os.replace(tmp, path)
