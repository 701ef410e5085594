"""Host-side preparation of a frame for the batched solver: cameras, landmark targets, depth crops.

Everything here runs once per frame on the host in numpy (no device reads): observed landmarks are
undistorted to pinhole pixels, each camera's depth map is cropped around where the frame's starting
mesh projects (with the landmarks' box), and the crops of a batch are padded to one size
(`collate`) so the device sees fixed shapes. The cold-start pose (landmarks lifted by depth, then
Kabsch with outlier rejection) is host work too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mmface4d_stream.face.models import R_CAMERA_FROM_MODEL_FRONTAL, FaceModel
from mmface4d_stream.fit.camera_terms import FitCamera, undistortion_grid
from mmface4d_stream.fit.depth_term import CameraBatch
from mmface4d_stream.geometry import kabsch
from mmface4d_stream.fit.template_lift import lift_landmarks
from mmface4d_stream.fit.fit_io import CameraObservation, FrameObservation

__all__ = ["PreparedCamera", "DepthCrop", "prepare_cameras", "crop_depth", "choose_crops", "cold_pose",
           "collate_cameras", "collate_crops", "patch_radius", "bucket"]

# Depth patch normals come from neighbours this many pixels away (see depth_term.lift_patches).
NORMAL_RADIUS_PX = 4


@dataclass
class PreparedCamera:
    """One camera of one frame, ready for the solver.

    Attributes:
        index: position in the observation.  camera: the lens model.
        r_cam_from_ref (3, 3), t_cam_from_ref (3,): reference -> camera, float64.
        lm_px: (L, 2) observed raw (distorted) image pixels per model landmark (0 where
            unobserved); `collate_cameras` undistorts them to pinhole pixels.
        lm_conf: (L,).
        n_observed: landmarks observed.  depth: uint16 (H, W) mm or None: the window of the image
            whose top-left pixel is `depth_offset` (x0, y0).
    """

    index: int
    camera: FitCamera
    r_cam_from_ref: np.ndarray
    t_cam_from_ref: np.ndarray
    lm_px: np.ndarray
    lm_conf: np.ndarray
    n_observed: int
    depth: np.ndarray | None
    depth_offset: tuple[int, int] = (0, 0)


@dataclass
class DepthCrop:
    """A strided crop of one camera's depth map: uint16 millimetres (h, w) (a view, not a copy);
    x0, y0 its top-left pixel. The samples' rays are interpolated on the device (`sample_rays`)."""

    x0: int
    y0: int
    depth_mm: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.depth_mm.shape


def patch_radius(stride: int) -> int:
    """Normal / window radius in samples for a sample stride."""
    return max(1, int(round(NORMAL_RADIUS_PX / max(int(stride), 1))))


def bucket(n: int, step: int = 16) -> int:
    """n rounded up to a multiple of `step` (padded sizes: few distinct shapes, few CUDA graphs)."""
    return max(step, -(-int(n) // step) * step)


def prepare_cameras(obs: FrameObservation, model: FaceModel,
                    landmark_weight: np.ndarray | None = None) -> list[PreparedCamera]:
    """Check and convert a frame's camera observations (ValueError names the camera on bad input).

    landmark_weight: (L,) per model landmark, multiplied into the observed confidences (None: 1).
    """
    if not obs.cameras:
        raise ValueError("a frame observation needs at least one camera")
    det_idx = model.landmark_detector_index
    n_lm = model.n_landmarks
    cams = []
    for c, co in enumerate(obs.cameras):
        if not isinstance(co, CameraObservation):
            raise ValueError(f"camera {c}: expected a CameraObservation, got {type(co).__name__}")
        cam = FitCamera.of(co.intrinsics)
        ox, oy = (int(v) for v in co.offset_px)
        t_rc = np.asarray(co.T_ref_from_cam, dtype=np.float64)
        if t_rc.shape != (4, 4):
            raise ValueError(f"camera {c}: T_ref_from_cam must be 4x4, got {t_rc.shape}")
        r_cr = t_rc[:3, :3].T
        t_cr = -r_cr @ t_rc[:3, 3]
        target = np.zeros((n_lm, 2))
        conf = np.zeros(n_lm)
        n_obs = 0
        if co.has_face():
            lm = np.asarray(co.landmarks_px, dtype=np.float64)
            if lm.ndim != 2 or lm.shape[1] != 2:
                raise ValueError(f"camera {c}: landmarks_px must be (P, 2), got {lm.shape}")
            p = len(lm)
            cf = np.ones(p) if co.landmark_conf is None else np.asarray(co.landmark_conf, np.float64).ravel()
            if len(cf) != p:
                raise ValueError(f"camera {c}: landmark_conf has {len(cf)} values for {p} landmarks")
            rows = np.flatnonzero(det_idx < p)
            d = det_idx[rows]
            ok = np.isfinite(lm[d]).all(1) & (cf[d] > 0)
            rows = rows[ok]
            target[rows] = lm[det_idx[rows]] + (ox, oy)
            conf[rows] = np.clip(cf[det_idx[rows]], 0, 1)
            if landmark_weight is not None:
                conf[rows] *= landmark_weight[rows]
            n_obs = len(rows)
        depth = None
        if co.depth_mm is not None:
            depth = np.asarray(co.depth_mm)
            if (ox, oy) == (0, 0) and depth.shape != (cam.height, cam.width):
                raise ValueError(
                    f"camera {c}: depth map is {depth.shape[1]}x{depth.shape[0]} but the camera is {cam.width}x{cam.height}"
                )
            if ox < 0 or oy < 0 or ox + depth.shape[1] > cam.width or oy + depth.shape[0] > cam.height:
                raise ValueError(
                    f"camera {c}: the {depth.shape[1]}x{depth.shape[0]} depth window at {(ox, oy)} leaves the "
                    f"{cam.width}x{cam.height} image"
                )
        if co.color_rgb is not None and (depth is None or np.shape(co.color_rgb) != (*depth.shape, 3)):
            raise ValueError(f"camera {c}: color_rgb must be (H, W, 3) of the depth window {None if depth is None else depth.shape}, "
                             f"got {np.shape(co.color_rgb)}")
        cams.append(PreparedCamera(c, cam, r_cr, t_cr, target, conf, n_obs, depth, (ox, oy)))
    return cams


def crop_depth(depth_mm: np.ndarray, camera: FitCamera, bbox: tuple[int, int, int, int], stride: int,
               offset: tuple[int, int] = (0, 0)) -> DepthCrop | None:
    """Crop `depth_mm` (the window of the image at `offset`) to bbox = (x0, y0, x1, y1) image pixels
    (exclusive end, clipped to the window), every `stride`-th pixel; None when the clipped crop is
    too small for the patch normals. The crop's x0, y0 are image pixels."""
    h_img, w_img = depth_mm.shape
    ox, oy = (int(v) for v in offset)
    stride = max(int(stride), 1)
    s = patch_radius(stride)
    x0, y0, x1, y1 = bbox
    x0, y0 = max(int(x0) - ox, 0), max(int(y0) - oy, 0)
    x1, y1 = min(int(x1) - ox, w_img), min(int(y1) - oy, h_img)
    if x1 - x0 <= 2 * s * stride or y1 - y0 <= 2 * s * stride:
        return None
    return DepthCrop(x0 + ox, y0 + oy, depth_mm[y0:y1:stride, x0:x1:stride])


def choose_crops(cams: list[PreparedCamera], samples_ref: np.ndarray, stride: int, margin: float) -> list[DepthCrop | None]:
    """Each camera's depth crop: the box of the projected starting mesh and the observed landmarks,
    grown by `margin` of its size (+4 px) on each side. samples_ref: (S, 3) reference-frame points."""
    crops: list[DepthCrop | None] = []
    for cam in cams:
        if cam.depth is None:
            crops.append(None)
            continue
        xc = samples_ref @ cam.r_cam_from_ref.T + cam.t_cam_from_ref
        front = xc[:, 2] > 0.05
        if int(front.sum()) < 10:
            crops.append(None)
            continue
        p = xc[front]
        xy = cam.camera.distort(p[:, :2] / p[:, 2:3])
        uv = np.stack([xy[:, 0] * cam.camera.fx + cam.camera.cx, xy[:, 1] * cam.camera.fy + cam.camera.cy], 1)
        lo, hi = uv.min(0), uv.max(0)
        if cam.n_observed:
            seen = cam.lm_conf > 0
            lo, hi = np.minimum(lo, cam.lm_px[seen].min(0)), np.maximum(hi, cam.lm_px[seen].max(0))
        m = margin * (hi - lo) + 4
        lo, hi = lo - m, hi + m
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            crops.append(None)
            continue
        crops.append(crop_depth(cam.depth, cam.camera, (int(lo[0]), int(lo[1]), int(hi[0]) + 1, int(hi[1]) + 1), stride,
                                 cam.depth_offset))
    return crops


def cold_pose(obs: FrameObservation, cams: list[PreparedCamera], model: FaceModel,
              rest: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Initial model -> reference pose (R (3, 3), t (3,)) without a warm start, for the model's
    vertices `rest` (N, 3) (its shape at the stream's identity, no expression).

    Landmarks lifted by depth + Kabsch with outlier rejection; without depth at the landmarks, a
    frontal face towards the camera with the most landmarks, at the distance where the model's
    landmark spread matches the observed one.
    """
    det_idx = model.landmark_detector_index
    n_det = int(det_idx.max()) + 1
    points, valid, _ = lift_landmarks(obs, n_det)
    lm_model = np.asarray(rest, np.float64)[model.landmark_vertex]
    rows = np.flatnonzero(valid[det_idx])
    if len(rows) >= 6:
        src, dst = lm_model[rows], points[det_idx[rows]]
        r, t = kabsch(src, dst)
        for _ in range(2):
            err = np.linalg.norm(src @ r.T + t - dst, axis=1)
            keep = err < max(3.0 * np.median(err), 0.01)
            if keep.sum() < 6:
                break
            r, t = kabsch(src[keep], dst[keep])
        return r, t
    best = max(cams, key=lambda c: c.n_observed)
    seen = best.lm_conf > 0
    target = best.camera.undistort_to_pinhole_px(best.lm_px[seen])
    src = lm_model[seen]
    spread_model = np.sqrt(((src[:, :2] - src[:, :2].mean(0)) ** 2).sum(1).mean())
    spread_px = np.sqrt(((target - target.mean(0)) ** 2).sum(1).mean())
    f = 0.5 * (best.camera.fx + best.camera.fy)
    z = f * spread_model / max(spread_px, 1e-6)
    ctr = target.mean(0)
    ray = np.array([(ctr[0] - best.camera.cx) / best.camera.fx, (ctr[1] - best.camera.cy) / best.camera.fy, 1.0])
    r_cam = R_CAMERA_FROM_MODEL_FRONTAL
    t_cam = ray * z - r_cam @ src.mean(0)
    r_rc = best.r_cam_from_ref.T
    t_rc = -r_rc @ best.t_cam_from_ref
    return r_rc @ r_cam, r_rc @ t_cam + t_rc


def collate_cameras(frames: list[list[PreparedCamera]], n_cameras: int, device) -> tuple[CameraBatch, torch.Tensor, torch.Tensor]:
    """Stack B frames' cameras, padded to `n_cameras` (padding: identity pose, no landmarks), and
    undistort every observed landmark to pinhole pixels (each camera's `FitCamera.undistort_to_pinhole_px`).

    Returns (CameraBatch, lm_target (B, C, L, 2) pinhole pixels, lm_conf (B, C, L)) on `device`.
    """
    b = len(frames)
    n_lm = len(frames[0][0].lm_conf)
    r = np.tile(np.eye(3, dtype=np.float32), (b, n_cameras, 1, 1))
    t = np.zeros((b, n_cameras, 3), np.float32)
    t[..., 2] = 1.0
    intr = np.zeros((b, n_cameras, 4), np.float64)
    intr[...] = (1.0, 1.0, 0.0, 0.0)
    dist = np.zeros((b, n_cameras, 8), np.float64)
    r2 = np.full((b, n_cameras), 1e12, np.float64)
    target = np.zeros((b, n_cameras, n_lm, 2), np.float64)
    conf = np.zeros((b, n_cameras, n_lm), np.float32)
    for i, cams in enumerate(frames):
        for k, cam in enumerate(cams):
            r[i, k], t[i, k] = cam.r_cam_from_ref, cam.t_cam_from_ref
            c = cam.camera
            intr[i, k] = (c.fx, c.fy, c.cx, c.cy)
            if c.distortion is not None:
                dist[i, k] = c.distortion
            r2[i, k] = min(c.radial_limit_r2, 1e12)
            target[i, k], conf[i, k] = cam.lm_px, cam.lm_conf
    for i, cams in enumerate(frames):
        for k, cam in enumerate(cams):
            seen = conf[i, k] > 0
            target[i, k][seen] = cam.camera.undistort_to_pinhole_px(target[i, k][seen])
    target = np.where(conf[..., None] > 0, target, 0.0)

    def dev(a):
        if a.dtype == np.float64:
            a = a.astype(np.float32)
        return torch.as_tensor(a).to(device, non_blocking=True)

    intr_t = dev(intr)
    cameras = CameraBatch(dev(r), dev(t), intr_t[..., :2], intr_t[..., 2:], dev(dist), dev(r2))
    return cameras, dev(target), dev(conf)


def collate_crops(frames: list[list[PreparedCamera]], crops: list[list[DepthCrop | None]], n_cameras: int, device,
                  grids: dict | None = None, size_step: int = 16):
    """Pad B frames' crops to one bucketed size, with each camera's undistortion grid.

    Args:
        frames: the frames' cameras; crops: their crops (same nesting, None: no depth).
        grids: a cache {FitCamera: device tensor (2, Gv, Gu)} kept by the caller across frames.
        size_step: the padded size is a multiple of this (few distinct shapes where each shape is
            a captured CUDA graph; 1 on a CPU, where padding is only extra work).
    Returns:
        depth_mm (B, C, H, W) uint16, ray_grid (B, C, 2, Gv, Gu) float32, origin (B, C, 2) float32
        pixels, size (B, C, 2) long samples, all on `device`.
    """
    b = len(frames)
    grids = {} if grids is None else grids
    shapes = [crop.shape for row in crops for crop in row if crop is not None]
    h = bucket(max((s[0] for s in shapes), default=1), size_step)
    w = bucket(max((s[1] for s in shapes), default=1), size_step)
    depth = np.zeros((b, n_cameras, h, w), np.uint16)
    origin = np.zeros((b, n_cameras, 2), np.float32)
    size = np.zeros((b, n_cameras, 2), np.int64)
    per_camera = []
    for i, row in enumerate(crops):
        for k, crop in enumerate(row):
            camera = frames[i][k].camera if k < len(frames[i]) else None
            if camera is not None and camera not in grids:
                grids[camera] = torch.as_tensor(undistortion_grid(camera)).permute(2, 0, 1).to(device)
            per_camera.append(grids.get(camera))
            if crop is None:
                continue
            ch, cw = crop.shape
            depth[i, k, :ch, :cw] = crop.depth_mm
            origin[i, k] = (crop.x0, crop.y0)
            size[i, k] = (cw, ch)
        per_camera.extend([None] * (n_cameras - len(row)))
    gv = max(g.shape[1] for g in per_camera if g is not None)
    gu = max(g.shape[2] for g in per_camera if g is not None)
    blank = torch.zeros((2, gv, gu), dtype=torch.float32, device=device)
    ray_grid = torch.stack([blank if g is None else g if g.shape[1:] == (gv, gu)
                            else torch.nn.functional.pad(g, (0, gu - g.shape[2], 0, gv - g.shape[1]))
                            for g in per_camera]).reshape(b, n_cameras, 2, gv, gu)

    def dev(a):
        return torch.as_tensor(a).to(device, non_blocking=True)

    return dev(depth), ray_grid, dev(origin), dev(size)
