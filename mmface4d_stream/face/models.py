"""Linear face models the fitter deforms: the model type, its tensors, and the user's BFM.

A `FaceModel` is a linear shape space

    v(α, β) = mean + B_id · α + B_exp · β          (N, 3) metres, in the model frame

plus the topology (triangles), the landmark mapping (detector point index -> model vertex index)
and the vertices the depth term should ignore (eyes, nostrils). The fitter adds per-vertex
offsets and a rigid pose on top (see `mmface4d_stream.fit.fitter`).

Model frame convention (shared by both models so that the fitter can start from a frontal pose):
x towards the subject's left, y up, z out of the face towards a viewer, metres. A face looking at
a camera (OpenCV frame: x right, y down, z forward) is therefore the model rotated by 180° about x.

Two models:

- `BfmModel.load(folder)`: Deep3DFaceRecon's `BFM_model_front.mat` (35709 vertices, 80 identity
  and 64 expression modes; Deep3DFaceRecon scales BFM09's micrometres by 1e-5, i.e. the file is in
  decimetres, and this loader converts to metres). The bases already include the PCA standard
  deviations, so coefficients have a unit normal prior. The reconstructions released with MMFace4D
  use this model, in metres, in the centre colour camera's frame (the sample sequence decodes to a
  face ~0.17 m wide at z ≈ 0.7 m). The landmark mapping comes from the upstream
  `landmark_mapping2.json` (pairs `[mediapipe_index, bfm_vertex]` grouped by region).
- `TemplateModel.from_points(points_cam, valid)` (`face.template_model`): no licensed file; the
  subject's own MediaPipe FaceMesh points lifted by depth, with scaling identity modes and
  procedural expression modes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np

from mmface4d_stream.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "FaceModel",
    "BfmModel",
    "load_landmark_mapping",
    "load_vertex_mask",
    "R_CAMERA_FROM_MODEL_FRONTAL",
]

#: Rotation taking the model frame (y up, z out of the face) to an OpenCV camera frame looking at
#: the face (y down, z forward): 180° about x.
R_CAMERA_FROM_MODEL_FRONTAL = np.diag([1.0, -1.0, -1.0])

BFM_MAT_NAME = "BFM_model_front.mat"
LANDMARK_MAPPING_NAME = "landmark_mapping2.json"
VERTEX_MASK_NAME = "bfm_mask.json"
_BFM_REQUIRED_KEYS = ("meanshape", "idBase", "exBase", "tri")
_BFM_DECIMETRE_TO_METRE = 0.1


@dataclass
class FaceModel:
    """A linear face shape model in the model frame (x left of the subject, y up, z out; metres).

    Attributes:
        name: "bfm", "template", or a user name.
        mean_shape: float32 (N, 3), metres.
        id_basis: float32 (N, 3, K_id), metres per unit coefficient (K_id may be 0).
        exp_basis: float32 (N, 3, K_exp), metres per unit coefficient (K_exp may be 0).
        triangles: int64 (F, 3) vertex indices, wound so that normals point out of the face (+z).
        landmark_detector_index: int64 (L,) index of each mapped point in the detector's output
            (MediaPipe FaceMesh numbering, 0..477).
        landmark_vertex: int64 (L,) model vertex of each mapped detector point.
        depth_excluded: int64 (E,) vertices the depth term ignores (eyeballs, nostrils: depth
            sensors return holes or mixed pixels there).
        id_names, exp_names: optional names of the modes (template models have them).
        texture_mean, texture_basis: optional BFM albedo (N, 3) and (N, 3, K_tex), 0..255; unused by
            the fitter, kept for renderers.
    """

    name: str
    mean_shape: np.ndarray
    id_basis: np.ndarray
    exp_basis: np.ndarray
    triangles: np.ndarray
    landmark_detector_index: np.ndarray
    landmark_vertex: np.ndarray
    depth_excluded: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    id_names: tuple[str, ...] = ()
    exp_names: tuple[str, ...] = ()
    texture_mean: np.ndarray | None = None
    texture_basis: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.mean_shape = np.ascontiguousarray(self.mean_shape, dtype=np.float32)
        n = self.mean_shape.shape[0]
        if self.mean_shape.ndim != 2 or self.mean_shape.shape[1] != 3 or n == 0:
            raise ValueError(f"mean_shape must be (N, 3) with N > 0, got {self.mean_shape.shape}")
        self.id_basis = np.ascontiguousarray(self.id_basis, dtype=np.float32)
        self.exp_basis = np.ascontiguousarray(self.exp_basis, dtype=np.float32)
        for label, basis in (("id_basis", self.id_basis), ("exp_basis", self.exp_basis)):
            if basis.ndim != 3 or basis.shape[:2] != (n, 3):
                raise ValueError(f"{label} must be (N={n}, 3, K), got {basis.shape}")
        self.triangles = np.ascontiguousarray(self.triangles, dtype=np.int64)
        if self.triangles.ndim != 2 or self.triangles.shape[1] != 3:
            raise ValueError(f"triangles must be (F, 3), got {self.triangles.shape}")
        if self.triangles.size and (self.triangles.min() < 0 or self.triangles.max() >= n):
            raise ValueError(f"triangle indices must lie in [0, {n}), got [{self.triangles.min()}, {self.triangles.max()}]")
        self.landmark_detector_index = np.asarray(self.landmark_detector_index, dtype=np.int64).ravel()
        self.landmark_vertex = np.asarray(self.landmark_vertex, dtype=np.int64).ravel()
        if self.landmark_detector_index.shape != self.landmark_vertex.shape:
            raise ValueError(
                f"landmark mapping halves differ in length: {self.landmark_detector_index.shape} "
                f"detector indices vs {self.landmark_vertex.shape} vertices"
            )
        if self.landmark_vertex.size and (self.landmark_vertex.min() < 0 or self.landmark_vertex.max() >= n):
            raise ValueError(f"landmark vertices must lie in [0, {n})")
        if self.landmark_detector_index.size and self.landmark_detector_index.min() < 0:
            raise ValueError("landmark detector indices must be non-negative")
        self.depth_excluded = np.unique(np.asarray(self.depth_excluded, dtype=np.int64).ravel())
        if self.depth_excluded.size and (self.depth_excluded.min() < 0 or self.depth_excluded.max() >= n):
            raise ValueError(f"depth_excluded vertices must lie in [0, {n})")

    @property
    def n_vertices(self) -> int:
        return int(self.mean_shape.shape[0])

    @property
    def n_id(self) -> int:
        return int(self.id_basis.shape[2])

    @property
    def n_exp(self) -> int:
        return int(self.exp_basis.shape[2])

    @property
    def n_landmarks(self) -> int:
        return int(self.landmark_vertex.shape[0])

    def vertices(
        self,
        id_coeffs: np.ndarray | None = None,
        exp_coeffs: np.ndarray | None = None,
        offsets: np.ndarray | None = None,
    ) -> np.ndarray:
        """Model-frame vertices float32 (N, 3) metres for coefficients (K_id,), (K_exp,) and offsets (N, 3).

        None means zeros. Raises ValueError for wrong lengths.
        """
        v = self.mean_shape.astype(np.float32, copy=True)
        if id_coeffs is not None and self.n_id:
            v += self.id_basis @ self._check_coeffs(id_coeffs, self.n_id, "id_coeffs")
        if exp_coeffs is not None and self.n_exp:
            v += self.exp_basis @ self._check_coeffs(exp_coeffs, self.n_exp, "exp_coeffs")
        if offsets is not None:
            offsets = np.asarray(offsets, dtype=np.float32)
            if offsets.shape != v.shape:
                raise ValueError(f"offsets must be {v.shape}, got {offsets.shape}")
            v += offsets
        return v

    def vertices_torch(self, id_coeffs, exp_coeffs, offsets=None, tensors: "ModelTensors | None" = None):
        """Torch version of `vertices`: coefficients (K_id,), (K_exp,) tensors -> (N, 3) tensor.

        `tensors` (from `to_torch`) avoids re-uploading the bases; without it they are converted
        on the coefficients' device. Differentiable in the coefficients and offsets.
        """
        import torch

        if tensors is None:
            device = (id_coeffs if id_coeffs is not None else exp_coeffs).device
            tensors = self.to_torch(device)
        v = tensors.mean_shape
        if id_coeffs is not None and self.n_id:
            v = v + torch.einsum("nck,k->nc", tensors.id_basis, id_coeffs.to(tensors.id_basis.dtype))
        if exp_coeffs is not None and self.n_exp:
            v = v + torch.einsum("nck,k->nc", tensors.exp_basis, exp_coeffs.to(tensors.exp_basis.dtype))
        if offsets is not None:
            v = v + offsets
        return v

    def to_torch(self, device="cpu") -> "ModelTensors":
        """The model's arrays as float32 / int64 torch tensors on `device`."""
        import torch

        def f(a):
            return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=device)

        def i(a):
            return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.int64, device=device)

        return ModelTensors(
            mean_shape=f(self.mean_shape),
            id_basis=f(self.id_basis),
            exp_basis=f(self.exp_basis),
            triangles=i(self.triangles),
            landmark_vertex=i(self.landmark_vertex),
        )

    @staticmethod
    def _check_coeffs(c, k: int, label: str) -> np.ndarray:
        c = np.asarray(c, dtype=np.float32).ravel()
        if c.shape != (k,):
            raise ValueError(f"{label} must have {k} values, got {c.shape[0]}")
        return c


@dataclass
class ModelTensors:
    """`FaceModel` arrays on a torch device (see `FaceModel.to_torch`)."""

    mean_shape: "object"
    id_basis: "object"
    exp_basis: "object"
    triangles: "object"
    landmark_vertex: "object"


# ----------------------------------------------------------------------------------------------
# BFM (Deep3DFaceRecon layout)


def load_landmark_mapping(path: str | PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an upstream `landmark_mapping2.json`: {region: [[mediapipe_index, vertex], ...], ...}.

    Returns (detector_index int64 (L,), vertex int64 (L,)) in file order (regions in file order).
    Raises InputError for a missing or malformed file.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError("landmark mapping file not found", path=path) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the landmark mapping as JSON ({exc})", path=path) from None
    if not isinstance(data, dict) or not data:
        raise InputError("a landmark mapping must be a JSON object {region: [[mediapipe_index, vertex], ...]}", path=path)
    det, ver = [], []
    for region, pairs in data.items():
        try:
            arr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        except (TypeError, ValueError):
            raise InputError(f"region {region!r} must be a list of [mediapipe_index, vertex] pairs", path=path) from None
        det.append(arr[:, 0])
        ver.append(arr[:, 1])
    detector_index, vertex = np.concatenate(det), np.concatenate(ver)
    if detector_index.min() < 0 or vertex.min() < 0:
        raise InputError("landmark mapping indices must be non-negative", path=path)
    return detector_index, vertex


def load_vertex_mask(path: str | PathLike) -> np.ndarray:
    """Read an upstream `bfm_mask.json` ({region: [vertex, ...]}) into sorted unique int64 vertex ids."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError("vertex mask file not found", path=path) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the vertex mask as JSON ({exc})", path=path) from None
    if not isinstance(data, dict):
        raise InputError("a vertex mask must be a JSON object {region: [vertex, ...]}", path=path)
    try:
        ids = [np.asarray(v, dtype=np.int64).ravel() for v in data.values()]
    except (TypeError, ValueError):
        raise InputError("vertex mask regions must be lists of integer vertex ids", path=path) from None
    return np.unique(np.concatenate(ids)) if ids else np.zeros(0, dtype=np.int64)


class BfmModel(FaceModel):
    """The Basel Face Model 2009 front part, in Deep3DFaceRecon's `BFM_model_front.mat` layout."""

    @classmethod
    def load(
        cls,
        folder: str | PathLike,
        landmark_mapping: str | PathLike | None = None,
        vertex_mask: str | PathLike | None = None,
    ) -> "BfmModel":
        """Load the BFM from `folder` (holding `BFM_model_front.mat`) or from the `.mat` path itself.

        Args:
            folder: directory with `BFM_model_front.mat`, or the path of a `.mat` in that layout:
                meanshape (1, 3N), idBase (3N, K_id), exBase (3N, K_exp), tri (F, 3) 1-based;
                optional meantex (1, 3N), texBase (3N, K_tex), point_buf. Decimetres.
            landmark_mapping: upstream `landmark_mapping2.json`; default: that name beside the .mat.
            vertex_mask: upstream `bfm_mask.json` (vertices the depth term ignores); default: that
                name beside the .mat when present, else none.
        Raises:
            InputError: missing file, missing key, or inconsistent sizes (naming the file).
        """
        folder = Path(folder)
        mat_path = folder if folder.suffix.lower() == ".mat" else folder / BFM_MAT_NAME
        if not mat_path.is_file():
            raise InputError("BFM model file not found (the BFM is licensed per user: point to your copy)", path=mat_path)
        import scipy.io

        try:
            mat = scipy.io.loadmat(str(mat_path))
        except Exception as exc:  # scipy raises several unrelated types for corrupt files
            raise InputError(f"cannot read the BFM .mat file ({exc})", path=mat_path) from None
        for key in _BFM_REQUIRED_KEYS:
            if key not in mat:
                raise InputError(f"the BFM .mat file has no {key!r} array (expected Deep3DFaceRecon's layout)", path=mat_path)
        mean = np.asarray(mat["meanshape"], dtype=np.float64).reshape(-1)
        if mean.size % 3:
            raise InputError(f"'meanshape' has {mean.size} values, not a multiple of 3", path=mat_path)
        n = mean.size // 3

        def basis(key: str) -> np.ndarray:
            b = np.asarray(mat[key], dtype=np.float64)
            if b.ndim != 2 or b.shape[0] != 3 * n:
                raise InputError(f"{key!r} must be (3N={3 * n}, K), got {b.shape}", path=mat_path)
            return (b.reshape(n, 3, b.shape[1]) * _BFM_DECIMETRE_TO_METRE).astype(np.float32)

        id_basis, exp_basis = basis("idBase"), basis("exBase")
        tri = np.asarray(mat["tri"], dtype=np.int64)
        if tri.ndim != 2 or tri.shape[1] != 3 or tri.min() < 1 or tri.max() > n:
            raise InputError(f"'tri' must be (F, 3) 1-based vertex indices in [1, {n}]", path=mat_path)
        tex_mean = tex_basis = None
        if "meantex" in mat and "texBase" in mat:
            tex_mean = np.asarray(mat["meantex"], dtype=np.float32).reshape(n, 3)
            tb = np.asarray(mat["texBase"], dtype=np.float32)
            tex_basis = tb.reshape(n, 3, tb.shape[1]) if tb.shape[0] == 3 * n else None

        map_path = Path(landmark_mapping) if landmark_mapping is not None else mat_path.parent / LANDMARK_MAPPING_NAME
        if landmark_mapping is None and not map_path.is_file():
            raise InputError(
                f"no landmark mapping given and no {LANDMARK_MAPPING_NAME} beside the BFM (pass its path)",
                path=map_path,
            )
        det_idx, vert = load_landmark_mapping(map_path)
        if vert.max() >= n:
            raise InputError(f"landmark mapping names vertex {vert.max()} but the BFM has {n} vertices", path=map_path)
        excluded = np.zeros(0, dtype=np.int64)
        mask_path = Path(vertex_mask) if vertex_mask is not None else mat_path.parent / VERTEX_MASK_NAME
        if vertex_mask is not None or mask_path.is_file():
            excluded = load_vertex_mask(mask_path)
            if excluded.size and excluded.max() >= n:
                raise InputError(f"vertex mask names vertex {excluded.max()} but the BFM has {n} vertices", path=mask_path)
        logger.info("loaded BFM %s: %d vertices, %d id, %d exp modes, %d landmarks",
                    mat_path, n, id_basis.shape[2], exp_basis.shape[2], vert.size)
        return cls(
            name="bfm",
            mean_shape=(mean.reshape(n, 3) * _BFM_DECIMETRE_TO_METRE).astype(np.float32),
            id_basis=id_basis,
            exp_basis=exp_basis,
            triangles=tri - 1,
            landmark_detector_index=det_idx,
            landmark_vertex=vert,
            depth_excluded=excluded,
            texture_mean=tex_mean,
            texture_basis=tex_basis,
        )
