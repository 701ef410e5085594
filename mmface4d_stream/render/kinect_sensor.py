"""A simulated Azure Kinect depth sensor: exact rendered depth in, a Kinect-like measurement out.

Depth realism (`DepthNoise`): Gaussian noise with sigma growing with z² (1.5 mm at 0.7 m) and
at oblique incidence, 1 mm quantization, dropouts at grazing angles and along silhouettes, flying
pixels (mixtures of foreground and background depth) at depth edges, 0 outside 0.25-3.86 m.

`kinect_depth` turns exact z (metres, along the optical axis) into uint16 millimetres with that
degradation; `infrared` makes the active IR amplitude image (Lambertian under the camera's own
illuminator, 1/z² falloff, shot noise); `surface_cosine` is the incidence both use. Inputs are
(H, W) images with the camera's `CameraModel.ray_map` (normalized undistorted (x, y) per pixel).
Used by the synthetic captures (`render.synth`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["DepthNoise", "kinect_depth", "infrared", "surface_cosine", "DEPTH_RANGE_M"]

DEPTH_RANGE_M = (0.25, 3.86)  # NFOV unbinned operating range
IR_REFERENCE_Z_M = 0.7  # distance at which a frontal surface's IR amplitude is 900 (+ 12 offset)


@dataclass(frozen=True)
class DepthNoise:
    """Kinect-like depth degradation (see the module docstring). `enabled=False`: exact depth,
    only quantized to millimetres.

    sigma_m: noise standard deviation at `sigma_ref_z_m`, metres; grows with z² and with
        1/sqrt(cos incidence).
    grazing_deg: incidence angles where dropout probability ramps from 0 to 1.
    edge_jump_m: a neighbour this much farther (or missing) makes a pixel an edge pixel.
    edge_drop_p, flying_p: probability that an edge pixel is dropped, or becomes a flying pixel.
    """

    enabled: bool = True
    sigma_m: float = 0.0015
    sigma_ref_z_m: float = 0.7
    grazing_deg: tuple[float, float] = (68.0, 82.0)
    edge_jump_m: float = 0.02
    edge_drop_p: float = 0.35
    flying_p: float = 0.3


def surface_cosine(depth_m: np.ndarray, rays: np.ndarray, step: int = 1) -> np.ndarray:
    """|cos| of the angle between each pixel's ray and its surface normal (from depth differences).

    Args:
        depth_m: (H, W) float32 metres, 0 = missing. rays: (H, W, 2) float32 (`CameraModel.ray_map`).
        step: evaluate on every step-th pixel and repeat (incidence varies slowly; 1080p uses 2).
    Returns:
        (H, W) float32, 0 where the depth or a neighbour is missing.
    """
    H, W = depth_m.shape
    z = depth_m[::step, ::step]
    rx = rays[::step, ::step, 0]
    ry = rays[::step, ::step, 1]
    px, py = rx * z, ry * z
    # Central differences along u (a) and v (b); the normal is a x b.
    ax = np.zeros_like(z); ay = np.zeros_like(z); az = np.zeros_like(z)
    bx = np.zeros_like(z); by = np.zeros_like(z); bz = np.zeros_like(z)
    ax[:, 1:-1] = px[:, 2:] - px[:, :-2]
    ay[:, 1:-1] = py[:, 2:] - py[:, :-2]
    az[:, 1:-1] = z[:, 2:] - z[:, :-2]
    bx[1:-1] = px[2:] - px[:-2]
    by[1:-1] = py[2:] - py[:-2]
    bz[1:-1] = z[2:] - z[:-2]
    nx = ay * bz - az * by
    ny = az * bx - ax * bz
    nz = ax * by - ay * bx
    # cos = |n . p| / (|n| |p|), with p = z (rx, ry, 1).
    dot = np.abs(nx * rx + ny * ry + nz)
    norm = np.sqrt((nx * nx + ny * ny + nz * nz) * (rx * rx + ry * ry + 1.0))
    cos = np.divide(dot, norm, out=np.zeros_like(dot), where=norm > 0)
    valid = z > 0
    ok = valid.copy()
    ok[:, 1:-1] &= valid[:, 2:] & valid[:, :-2]
    ok[1:-1] &= valid[2:] & valid[:-2]
    ok[[0, -1], :] = False
    ok[:, [0, -1]] = False
    cos = np.where(ok, cos, np.float32(0)).astype(np.float32)
    if step > 1:
        cos = np.repeat(np.repeat(cos, step, axis=0), step, axis=1)[:H, :W]
        cos = np.where(depth_m > 0, cos, np.float32(0))
    return cos


def kinect_depth(depth_m: np.ndarray, rays: np.ndarray, rng: np.random.Generator, noise: DepthNoise,
                 cos: np.ndarray | None = None) -> np.ndarray:
    """Turn exact depth into a Kinect-like measurement.

    Args:
        depth_m: (H, W) float32 exact z along the optical axis, metres, 0 where no surface.
        rays: (H, W, 2) float32 normalized undistorted (x, y) of each pixel (`CameraModel.ray_map`).
        rng: generator for this camera and frame.
        noise: `DepthNoise`.
        cos: this image's `surface_cosine`, when the caller already has it (shared with `infrared`).
    Returns:
        (H, W) uint16 depth, millimetres, 0 = no measurement.
    """
    from scipy.ndimage import maximum_filter, minimum_filter

    z = np.asarray(depth_m, dtype=np.float32)
    valid = z > 0
    if noise.enabled:
        if cos is None:
            cos = surface_cosine(z, rays, step=2 if z.shape[1] > 1000 else 1)
        scale = np.float32(noise.sigma_m / noise.sigma_ref_z_m**2)
        sigma = scale * z * z / np.sqrt(np.maximum(cos, np.float32(0.25)))
        z = np.where(valid, z + sigma * rng.standard_normal(z.shape, dtype=np.float32), np.float32(0))
        # Depth edges: a 3x3 neighbour much farther (a missing one counts as farther).
        big = np.float32(1e4)
        exact = np.where(valid, depth_m, big).astype(np.float32)
        far = maximum_filter(exact, size=3, mode="nearest")
        near = minimum_filter(exact, size=3, mode="nearest")
        # Dropouts where the surface is seen at grazing incidence; the incidence estimate is
        # meaningless across a depth edge, whose pixels are handled below instead.
        lo, hi = (math.cos(math.radians(a)) for a in noise.grazing_deg)
        p_drop = np.float32(1) - np.clip((cos - np.float32(hi)) / np.float32(lo - hi), 0, 1)
        smooth = (far - near) <= noise.edge_jump_m
        drop = smooth & (cos > 0) & (rng.random(z.shape, dtype=np.float32) < p_drop)
        edge = valid & (far - exact > noise.edge_jump_m)
        u = rng.random(z.shape, dtype=np.float32)
        edge_drop = edge & (u < noise.edge_drop_p)
        # Flying pixels mix the nearest and farthest surface; next to "no surface" they just drop.
        flying = edge & ~edge_drop & (u < noise.edge_drop_p + noise.flying_p) & (far < big)
        t = np.float32(0.15) + np.float32(0.7) * rng.random(z.shape, dtype=np.float32)
        z = np.where(flying, near + t * (far - near), z)
        z = np.where(drop | edge_drop | (edge & (far >= big) & (u < 0.5)), np.float32(0), z)
    mm = np.rint(z * np.float32(1000.0))
    mm[(mm < DEPTH_RANGE_M[0] * 1000) | (mm > DEPTH_RANGE_M[1] * 1000)] = 0
    return mm.astype(np.uint16)


def infrared(depth_m: np.ndarray, rays: np.ndarray, rng: np.random.Generator,
             cos: np.ndarray | None = None) -> np.ndarray:
    """Active IR amplitude: Lambertian under the camera's own illuminator, 1/z² falloff, shot noise;
    (H, W) uint16. `cos`: this image's `surface_cosine` (step 1), when the caller already has it."""
    if cos is None:
        cos = surface_cosine(np.asarray(depth_m, dtype=np.float32), rays)
    z = np.maximum(depth_m, np.float32(0.1))
    ir = np.float32(900.0 * IR_REFERENCE_Z_M**2) * cos / (z * z)
    ir = ir + np.sqrt(np.maximum(ir, np.float32(1))) * rng.standard_normal(ir.shape, dtype=np.float32) + np.float32(12)
    return np.clip(ir, 0, 65535).astype(np.uint16)
