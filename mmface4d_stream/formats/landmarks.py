"""Per-camera 2D landmarks `<seq>_<cam>.pkl`: a pickled float64 array (frames, 98, 2), pixels.

The dataset's points are HRNetv2 detections in the WFLW 98-point layout. Reading goes through
`safe_pickle`, which rebuilds numpy arrays and plain containers and refuses any other callable a
crafted pickle names (nothing in the file is run).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from mmface4d_stream.errors import InputError
from mmface4d_stream.formats.output_files import replacing
from mmface4d_stream.formats.safe_pickle import load_data_pickle, pickled_array_shape

WFLW_POINTS = 98


def read_landmarks_pkl(path: str | os.PathLike) -> np.ndarray:
    """Load landmarks as float64 (frames, P, 2) pixel coordinates."""
    path = Path(path)
    data = load_data_pickle(path, "landmark pickle")
    try:
        array = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"expected a numeric landmark array ({exc})", path) from None
    if array.ndim != 3 or array.shape[2] != 2:
        raise InputError(f"expected an array of shape (frames, points, 2), got {array.shape}", path)
    return array


def landmark_frame_count(path: str | os.PathLike) -> int:
    """Frames in a landmark pickle: read from its opcodes when it is a plain numpy pickle (nothing
    is unpickled), else by `read_landmarks_pkl` (which refuses what is not data)."""
    shape = pickled_array_shape(path) if Path(path).is_file() else None
    if shape is not None and len(shape) == 3 and shape[2] == 2:
        return shape[0]
    return read_landmarks_pkl(path).shape[0]


def write_landmarks_pkl(path: str | os.PathLike, landmarks: np.ndarray) -> None:
    """Save float (frames, P, 2) pixel landmarks as a pickled float64 array, via a temporary file."""
    array = np.asarray(landmarks, dtype=np.float64)
    if array.ndim != 3 or array.shape[2] != 2:
        raise ValueError(f"expected landmarks of shape (frames, points, 2), got {array.shape}")
    with replacing(path) as tmp, open(tmp, "wb") as handle:
        pickle.dump(array, handle, protocol=4)
