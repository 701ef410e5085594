"""Per-camera 2D landmarks `<seq>_<cam>.pkl`: a pickled float64 array (frames, 98, 2), pixels.

The dataset's points are HRNetv2 detections in the WFLW 98-point layout. Pickle files run code
when loaded: read only files you trust (the dataset's own).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from mmface4d_stream.errors import InputError

WFLW_POINTS = 98


def read_landmarks_pkl(path: str | os.PathLike) -> np.ndarray:
    """Load landmarks as float64 (frames, P, 2) pixel coordinates."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    try:
        with open(path, "rb") as handle:
            data = pickle.load(handle)
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as exc:
        raise InputError(f"not a readable landmark pickle ({exc})", path) from None
    array = np.asarray(data, dtype=np.float64)
    if array.ndim != 3 or array.shape[2] != 2:
        raise InputError(f"expected an array of shape (frames, points, 2), got {array.shape}", path)
    return array


def write_landmarks_pkl(path: str | os.PathLike, landmarks: np.ndarray) -> None:
    """Save float (frames, P, 2) pixel landmarks as a pickled float64 array, via a temporary file."""
    array = np.asarray(landmarks, dtype=np.float64)
    if array.ndim != 3 or array.shape[2] != 2:
        raise ValueError(f"expected landmarks of shape (frames, points, 2), got {array.shape}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "wb") as handle:
        pickle.dump(array, handle, protocol=4)
    os.replace(tmp, path)
