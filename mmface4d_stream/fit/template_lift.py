"""Lift 2D landmarks to 3D with the registered depth maps (cold starts and the built-in template).

A landmark pixel is undistorted to its ray and scaled by the depth found around it (median of the
non-zero depths in a small window: robust to a hole or an edge pixel). With several cameras, each
point's lifts are moved to the reference frame and combined around the lift the other cameras'
landmarks agree with best (`_cross_view_error`): a lift farther than `consensus_m` from it is
dropped.

Why not the median of the lifts: a camera that does not see a point (the far side of the face, past
the silhouette) still gets a landmark there, and MediaPipe places it well in 2D, but the depth at
that pixel is the surface in front of the point (the cheek, the nose), tens of mm too near. On the
3-camera synthetic capture the face's border on one side is seen by one camera only: two
occluded lifts 30-120 mm too near out-voted the one right lift, and the template's border sat on
the front of the cheek (35 mm inward, 36 mm towards the camera). The occluded lift disagrees with
the other cameras' rays through the point (it lies on the wrong ray for them); the visible one
does not.
"""

from __future__ import annotations

import warnings

import numpy as np

from mmface4d_stream.fit.camera_terms import FitCamera
from mmface4d_stream.fit.fit_io import FrameObservation

__all__ = ["lift_landmarks"]


def _depth_at(depth_mm: np.ndarray, uv: np.ndarray, half_window: int) -> np.ndarray:
    """Median non-zero depth (metres) in a (2w+1)² window around each pixel (P, 2); NaN where none."""
    h, w = depth_mm.shape
    out = np.full(len(uv), np.nan)
    finite = np.isfinite(uv).all(1)
    ui = np.zeros(len(uv), np.int64)
    vi = np.zeros(len(uv), np.int64)
    ui[finite] = np.round(uv[finite, 0]).astype(np.int64)
    vi[finite] = np.round(uv[finite, 1]).astype(np.int64)
    offs = np.arange(-half_window, half_window + 1)
    du, dv = np.meshgrid(offs, offs)
    uu = ui[:, None] + du.ravel()[None]
    vv = vi[:, None] + dv.ravel()[None]
    inside = (uu >= 0) & (uu < w) & (vv >= 0) & (vv < h) & finite[:, None]
    vals = np.where(inside, depth_mm[np.clip(vv, 0, h - 1), np.clip(uu, 0, w - 1)], 0).astype(np.float64)
    vals[vals <= 0] = np.nan
    has = ~np.isnan(vals).all(1)
    out[has] = np.nanmedian(vals[has], axis=1) * 1e-3
    return out


def lift_landmarks(
    obs: FrameObservation,
    n_points: int,
    half_window: int = 2,
    consensus_m: float = 0.01,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3D positions of the first `n_points` detector points in the reference frame.

    Args:
        obs: the frame; cameras without landmarks or depth contribute nothing.
        n_points: how many detector points to lift (468 for the FaceMesh template).
    Returns:
        (points float64 (n_points, 3) metres, valid bool (n_points,), n_views int (n_points,)):
        points are NaN where not valid.
    """
    lifts = np.full((len(obs.cameras), n_points, 3), np.nan)
    # Each camera's observed landmark rays: normalized pinhole coordinates (C, P, 2), NaN where unobserved.
    rays = np.full((len(obs.cameras), n_points, 2), np.nan)
    cams_from_ref = [None] * len(obs.cameras)
    for c, cam_obs in enumerate(obs.cameras):
        if cam_obs.depth_mm is None or not cam_obs.has_face():
            continue
        cam = FitCamera.of(cam_obs.intrinsics)
        lm = np.asarray(cam_obs.landmarks_px, dtype=np.float64)[:n_points]
        k = len(lm)
        conf = np.ones(k) if cam_obs.landmark_conf is None else np.asarray(cam_obs.landmark_conf, float).ravel()[:k]
        z = _depth_at(np.asarray(cam_obs.depth_mm), lm, half_window)
        z[conf <= 0] = np.nan
        xy = cam.undistort(np.nan_to_num(lm) + np.asarray(cam_obs.offset_px, np.float64))
        p_cam = np.concatenate([xy * z[:, None], z[:, None]], 1)
        t = np.asarray(cam_obs.T_ref_from_cam, dtype=np.float64)
        lifts[c, :k] = p_cam @ t[:3, :3].T + t[:3, 3]
        rays[c, :k] = np.where((np.isfinite(lm).all(1) & (conf > 0))[:, None], xy, np.nan)
        cams_from_ref[c] = (t[:3, :3].T, -t[:3, :3].T @ t[:3, 3])
    # Points no camera measured are all-NaN columns: their (NaN) statistics are expected.
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        score = _cross_view_error(lifts, rays, cams_from_ref)
        best = np.argmin(np.where(np.isnan(score), np.inf, score), axis=0)
        anchor = lifts[best, np.arange(n_points)]
        dist = np.linalg.norm(lifts - anchor[None], axis=2)
        lifts[~(dist < consensus_m)] = np.nan
        points = np.nanmean(lifts, axis=0)
    n_views = (~np.isnan(lifts[..., 0])).sum(0)
    valid = n_views > 0
    valid &= _plausible_face_points(points, valid)
    n_views[~valid] = 0
    points[~valid] = np.nan
    return points, valid, n_views


def _cross_view_error(lifts: np.ndarray, rays: np.ndarray, cams_from_ref: list) -> np.ndarray:
    """How far each camera's lift lies from the other cameras' landmark rays: (C, P) metres.

    Args:
        lifts: (C, P, 3) reference-frame lifts, NaN where a camera has none.
        rays: (C, P, 2) each camera's observed landmarks as normalized pinhole coordinates, NaN
            where unobserved.  cams_from_ref: per camera (R (3, 3), t (3,)) reference -> camera,
            or None for a camera without landmarks or depth.
    Returns:
        The median over the other cameras that observed the point of the lateral distance (at the
        lift's depth) between the lift and that camera's ray; 0 where no other camera observed it,
        NaN where the camera has no lift.
    """
    n_cams, n_points = lifts.shape[:2]
    lateral = np.full((n_cams, n_cams, n_points), np.nan)  # [lift camera, judging camera, point]
    for b, pose in enumerate(cams_from_ref):
        if pose is None:
            continue
        x = lifts @ pose[0].T + pose[1]  # every camera's lifts in camera b's frame
        z = x[..., 2]
        lateral[:, b] = np.where(z > 0, np.linalg.norm(x[..., :2] / z[..., None] - rays[b][None], axis=-1) * z, np.nan)
        lateral[b, b] = np.nan  # a camera does not judge its own lift
    score = np.nanmedian(lateral, axis=1)
    return np.where(np.isnan(score) & ~np.isnan(lifts[..., 0]), 0.0, score)


# A face fits in a ball of this radius around its median point; lifts beyond it hit the background.
_FACE_RADIUS_M = 0.15
# A FaceMesh point farther than this from the median of its mesh neighbours is a depth outlier
# (silhouette pixels seen over the background, flying pixels); the template fills it smoothly.
_NEIGHBOUR_TOLERANCE_M = 0.02


def _plausible_face_points(points: np.ndarray, valid: np.ndarray, rounds: int = 3) -> np.ndarray:
    """Mask (P,) of lifted points consistent with a face surface: near the face and near their neighbours."""
    keep = valid.copy()
    if keep.sum() < 4:
        return keep
    centre = np.median(points[keep], axis=0)
    keep &= np.linalg.norm(np.nan_to_num(points) - centre, axis=1) < _FACE_RADIUS_M
    if len(points) < 468:
        return keep
    from mmface4d_stream.face.topology import mediapipe_triangles, mesh_edges

    edges = mesh_edges(mediapipe_triangles())
    edges = np.concatenate([edges, edges[:, ::-1]])
    for _ in range(rounds):
        usable = keep[edges[:, 1]]
        src, dst = edges[usable, 0], edges[usable, 1]
        order = np.argsort(src, kind="stable")
        src, dst = src[order], dst[order]
        bounds = np.searchsorted(src, np.arange(len(points) + 1))
        changed = False
        for i in np.flatnonzero(keep[:468]):
            neighbours = dst[bounds[i]:bounds[i + 1]]
            if len(neighbours) < 2:
                continue
            if np.linalg.norm(points[i] - np.median(points[neighbours], axis=0)) > _NEIGHBOUR_TOLERANCE_M:
                keep[i] = False
                changed = True
        if not changed:
            break
    return keep
