"""Render a mesh nut sequence to a video, headless (the upstream `visualize` step).

`render_mesh_video(prefix, out_path)` decodes `<prefix>_{0,1,2}.nut` frame by frame, draws each
frame shaded grey with the offscreen renderer, one view or three side by side (the mesh seen from
-35°, 0° and +35° of yaw around its centre, like the capture rig), and writes `out_path/output.mp4`
(H.264, 30 fps, one video frame per mesh frame). The virtual cameras are fixed for the whole
sequence (framed on the first frame), so head motion stays visible.

Triangles: `faces` (a `.npy`, `.pkl` or `.obj` file, or an array). Without it, a 468-vertex
sequence uses MediaPipe's triangles and a sequence with a `faces.npy` beside it (as
`mmface4d synth` writes in `gt/`) uses that; the BFM's 35709-vertex topology is licensed and
never shipped, so BFM sequences need `faces` (the user's `bfm_faces.npy`/`.pkl`).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np

from mmface4d_stream.errors import InputError
from mmface4d_stream.geometry import RigidTransform, so3_exp
from mmface4d_stream.k4a.camera_model import CameraModel
from mmface4d_stream.render.renderer import MeshRenderer

logger = logging.getLogger(__name__)

__all__ = ["BFM_VERTICES", "VIEW_YAWS_DEG", "default_faces", "render_mesh_video", "view_poses"]

BFM_VERTICES = 35709
VIEW_YAWS_DEG = {1: (0.0,), 3: (-35.0, 0.0, 35.0)}
BACKGROUND = (255, 255, 255)
MESH_GREY = 0.72


def default_faces(prefix: str | os.PathLike, n_vertices: int) -> np.ndarray:
    """Triangles when none are given: MediaPipe's for 468 vertices, else `faces.npy` beside the
    sequence; otherwise (BFM included) an `InputError` asking for `--faces`."""
    from mmface4d_stream.formats.faces import load_faces

    if n_vertices == BFM_VERTICES:
        raise InputError(
            f"{n_vertices} vertices is the BFM topology, whose triangles are not shipped: pass --faces "
            "with your bfm_faces.npy or bfm_faces.pkl", path=prefix)
    if n_vertices == 468:
        from mmface4d_stream.face.topology import mediapipe_triangles

        return mediapipe_triangles().astype(np.int32)
    beside = Path(str(prefix)).parent / "faces.npy"
    if beside.is_file():
        return load_faces(beside, n_vertices)
    raise InputError(f"no triangles known for {n_vertices} vertices: pass --faces (a .npy, .pkl or .obj file)",
                     path=prefix)


def view_poses(vertices: np.ndarray, views: int, camera: CameraModel, fill: float = 0.8) -> list[np.ndarray]:
    """Virtual camera poses framing a mesh: T_cam_from_mesh (4x4) for each view.

    The mesh is taken to be in a camera-like frame (x right, y down, z forward, as MMFace4D meshes
    are, in the reference Kinect's frame): each view looks at the mesh's bounding-box centre along
    +z, turned by its yaw about the vertical through that centre, from the distance at which the
    mesh's extent fills `fill` of the image.
    """
    if views not in VIEW_YAWS_DEG:
        raise ValueError(f"views must be 1 or 3, got {views}")
    lo, hi = vertices.min(0), vertices.max(0)
    centre = (lo + hi) / 2.0
    radius = float(np.linalg.norm(hi - lo)) / 2.0
    focal = min(camera.fx, camera.fy)
    half_image = min(camera.width, camera.height) / 2.0
    distance = max(radius * focal / (fill * half_image), radius * 1.5, 0.05)
    poses = []
    for yaw in VIEW_YAWS_DEG[views]:
        R_world_from_cam = so3_exp([0.0, math.radians(yaw), 0.0])
        position = centre - R_world_from_cam @ np.array([0.0, 0.0, distance])
        poses.append(RigidTransform(R_world_from_cam, position).inverse().as_matrix())
    return poses


def render_mesh_video(
    prefix: str | os.PathLike,
    out_path: str | os.PathLike,
    n_vertices: int | None = None,
    faces: str | os.PathLike | np.ndarray | None = None,
    views: int = 1,
    size: int = 512,
    max_frames: int | None = None,
    progress: bool = True,
) -> Path:
    """Render a mesh nut triplet to `out_path/output.mp4`.

    Args:
        prefix: triplet prefix (`<prefix>_0.nut` ...), or the path of one of its files.
        out_path: output folder (created); the video is `output.mp4` in it.
        n_vertices: vertex count (None: inferred from the first frame).
        faces: triangles (file or (F, 3) int array); None: see `default_faces`.
        views: 1 or 3 views side by side.
        size: side of each square view, pixels (even).
        max_frames: render only the first frames (None: all).
        progress: tqdm progress bar on stderr.
    Returns:
        The path of the video; it has one frame per mesh frame rendered.
    """
    from tqdm import tqdm

    from mmface4d_stream.formats.color_mp4 import ColorMp4Writer
    from mmface4d_stream.formats.faces import load_faces
    from mmface4d_stream.formats.mesh_nut import MeshNutReader

    if views not in VIEW_YAWS_DEG:
        raise InputError(f"--views must be 1 or 3, got {views}")
    if size < 16 or size % 2:
        raise InputError(f"view size must be an even number of pixels >= 16, got {size}")
    if max_frames is not None and max_frames < 1:
        raise InputError(f"max_frames must be at least 1, got {max_frames}")
    out_dir = Path(out_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    video = out_dir / "output.mp4"

    with MeshNutReader(prefix, n_vertices=n_vertices) as reader:
        n = reader.n_vertices
        if faces is None:
            tris = default_faces(reader.prefix, n)
        elif isinstance(faces, np.ndarray):
            tris = np.asarray(faces, dtype=np.int32)
            if tris.ndim != 2 or tris.shape[1] != 3 or tris.min() < 0 or tris.max() >= n:
                raise InputError(f"faces must be (F, 3) indices into {n} vertices")
        else:
            tris = load_faces(faces, n)
        total = len(reader) if max_frames is None else min(len(reader), max_frames)
        focal = size * 1.2
        camera = CameraModel(size, size, focal, focal, (size - 1) / 2.0, (size - 1) / 2.0)
        colors = np.full((n, 3), MESH_GREY, dtype=np.float32)
        poses = None
        with MeshRenderer(camera, tris, n, colors=colors, shading="smooth", ambient=0.25,
                          background=BACKGROUND, near=0.01, far=50.0) as renderer, \
                ColorMp4Writer(video, size * views, size, fps=int(round(reader.fps or 30)), crf=18,
                               atomic=True) as writer, \
                tqdm(total=total, desc="visualize", unit="frame", disable=not progress, leave=False) as bar:
            for index, vertices in enumerate(reader):
                if index >= total:
                    break
                if not np.isfinite(vertices).all():
                    raise InputError("frame holds NaN or infinite vertices", path=reader.prefix, frame=index)
                if poses is None:
                    poses = view_poses(vertices, views, camera)
                tiles = [renderer.render(vertices, T_cam_from_world=T).color for T in poses]
                writer.write(np.concatenate(tiles, axis=1))
                bar.update(1)
    logger.info("wrote %s (%d frames, %d view(s))", video, total, views)
    return video
