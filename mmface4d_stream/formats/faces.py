"""Triangle lists for mesh sequences, from `.npy`, `.pkl` or `.obj` files, and per-frame mesh export.

The dataset's `bfm_faces.pkl` is a pickled trimesh `TrackedArray` (an ndarray subclass); it loads here
as a plain ndarray without trimesh installed. `faces.pkl` is a pickled list of index triples. Pickles
are read by `safe_pickle` (arrays and plain containers only; a pickle naming any other callable is
refused, never run). A pickled mapping with a "faces" entry is accepted too.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mmface4d_stream.errors import InputError
from mmface4d_stream.formats.safe_pickle import load_data_pickle


def _faces_from_obj(path: Path) -> np.ndarray:
    faces = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.startswith("f "):
                corners = [int(token.split("/")[0]) for token in line.split()[1:]]
                # Fan-triangulate polygons; OBJ indices are 1-based (negative = relative to the end).
                for k in range(1, len(corners) - 1):
                    faces.append((corners[0], corners[k], corners[k + 1]))
    if not faces:
        raise InputError("holds no 'f' lines", path)
    faces = np.asarray(faces, dtype=np.int64)
    if (faces < 0).any():
        raise InputError("relative (negative) face indices are not supported", path)
    return faces - 1


def load_faces(path: str | os.PathLike, n_vertices: int | None = None) -> np.ndarray:
    """Load triangles as int32 (F, 3) zero-based vertex indices.

    `.npy` and `.pkl` arrays that are 1-based (smallest index 1 and largest == n_vertices) are shifted.
    Indices outside [0, n_vertices) raise `InputError`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            faces = np.load(path, allow_pickle=False)
        elif suffix == ".pkl":
            faces = load_data_pickle(path, "faces pickle")
            if isinstance(faces, dict) and "faces" in faces:
                faces = faces["faces"]
        elif suffix == ".obj":
            faces = _faces_from_obj(path)
        else:
            raise InputError("unknown faces format (expected .npy, .pkl or .obj)", path)
    except ValueError as exc:
        raise InputError(f"cannot read faces ({exc})", path) from None
    try:
        faces = np.asarray(faces)
    except (TypeError, ValueError) as exc:
        raise InputError(f"expected integer triangles ({exc})", path) from None
    if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
        raise InputError(f"expected integer triangles of shape (F, 3), got {faces.dtype} {faces.shape}", path)
    faces = faces.astype(np.int64)
    if n_vertices is not None and suffix != ".obj" and faces.min() == 1 and faces.max() == n_vertices:
        faces = faces - 1
    if faces.min() < 0 or (n_vertices is not None and faces.max() >= n_vertices):
        raise InputError(f"face indices span {faces.min()}..{faces.max()}, outside 0..{(n_vertices or 0) - 1}",
                         path)
    return faces.astype(np.int32)


def write_obj(path: str | os.PathLike, vertices: np.ndarray, faces: np.ndarray) -> None:
    """Write a Wavefront OBJ: vertices float (N, 3) metres, faces int (F, 3) zero-based."""
    with open(path, "w", encoding="ascii") as handle:
        np.savetxt(handle, vertices, fmt="v %.6f %.6f %.6f")
        np.savetxt(handle, np.asarray(faces) + 1, fmt="f %d %d %d")


def write_ply(path: str | os.PathLike, vertices: np.ndarray, faces: np.ndarray) -> None:
    """Write a binary little-endian PLY: float32 vertices (N, 3), int32 triangles (F, 3)."""
    vertices = np.ascontiguousarray(vertices, dtype="<f4")
    faces = np.asarray(faces, dtype="<i4")
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(vertices)}\nproperty float x\nproperty float y\nproperty float z\n"
        f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    face_records = np.empty(len(faces), dtype=[("n", "u1"), ("idx", "<i4", (3,))])
    face_records["n"] = 3
    face_records["idx"] = faces
    with open(path, "wb") as handle:
        handle.write(header.encode("ascii"))
        handle.write(vertices.tobytes())
        handle.write(face_records.tobytes())
