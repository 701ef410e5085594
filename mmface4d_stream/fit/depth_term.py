"""The depth term, batched over streams and cameras with fixed shapes: patches, association, residuals.

Each camera's registered depth map is cropped around the face on the host (`frame_prep`), padded to
a common patch size and lifted to 3D on the device: points along each pixel's exact ray, normals
from central differences on window-averaged depth (a Kinect's per-pixel noise would tilt normals
by tens of degrees over a 2-pixel baseline), validity where the neighbourhood is continuous.
Model points are associated projectively (KinectFusion, Newcombe et al. 2011): projected with the
full lens model into the patch, the pixel's point and normal are the target, and the residual is
the point-to-plane distance (Chen & Medioni 1992). Rows that do not associate keep a zero weight:
every tensor keeps its shape, so a frame needs no host decision and can be graph-captured.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mmface4d_stream.fit.camera_terms import sample_rays
from mmface4d_stream.fit.model_pack import cross3

__all__ = ["CameraBatch", "PatchBatch", "box_sums", "lift_patches", "depth_rows", "MIN_PATCH_VALID"]

# A camera whose lifted patch has fewer valid samples than this contributes no depth.
MIN_PATCH_VALID = 50


@dataclass
class CameraBatch:
    """C cameras of B streams: extrinsics and the Kinect (OpenCV rational) lens model.

    Attributes:
        r: (B, C, 3, 3) reference -> camera rotation.  t: (B, C, 3) metres.
        focal: (B, C, 2) fx, fy pixels.  centre: (B, C, 2) cx, cy pixels (pixel centres at integers).
        dist: (B, C, 8) k1..k6, p1, p2 (zeros: ideal pinhole).  r2_limit: (B, C) squared normalized
            radius beyond which the radial factor is held constant (1e12: none).
    """

    r: torch.Tensor
    t: torch.Tensor
    focal: torch.Tensor
    centre: torch.Tensor
    dist: torch.Tensor
    r2_limit: torch.Tensor

    def to_cameras(self, points_ref: torch.Tensor) -> torch.Tensor:
        """(B, M, 3) reference-frame points -> (B, C, M, 3) in each camera's frame."""
        return self.rotate(points_ref) + self.t[:, :, None, :]

    def rotate(self, vectors_ref: torch.Tensor) -> torch.Tensor:
        """(B, M, 3) reference-frame directions -> (B, C, M, 3) camera-frame directions."""
        return vectors_ref[:, None] @ self.r.transpose(-1, -2)

    def project(self, points_cam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, M, 3) camera-frame points -> raw (distorted) pixel coordinates u, v, each (B, C, M)."""
        z = points_cam[..., 2].clamp_min(1e-6)
        x, y = points_cam[..., 0] / z, points_cam[..., 1] / z
        d = self.dist[..., None]  # (B, C, 8, 1) broadcasts against (B, C, M)
        k1, k2, k3, k4, k5, k6, p1, p2 = (d[:, :, i] for i in range(8))
        r2 = x * x + y * y
        r2c = torch.minimum(r2, self.r2_limit[..., None])
        radial = (1 + r2c * (k1 + r2c * (k2 + r2c * k3))) / (1 + r2c * (k4 + r2c * (k5 + r2c * k6)))
        xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        f, c = self.focal[:, :, None], self.centre[:, :, None]
        return xd * f[..., 0] + c[..., 0], yd * f[..., 1] + c[..., 1]


def box_sums(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Sums of x (..., H, W) over each sample's (2r+1)² window, zeros beyond the edges -> (..., H, W).

    By a summed-area table, in float64: integer inputs (millimetres, counts) sum exactly whatever
    the window or the crop size, the same values as a direct window sum at a fraction of the
    work (4 reads per sample instead of (2r+1)²).
    """
    s = int(radius)
    k = 2 * s + 1
    table = F.pad(x.to(torch.float64), (s + 1, s, s + 1, s)).cumsum(-1).cumsum(-2)
    out = table[..., k:, k:] - table[..., :-k, k:] - table[..., k:, :-k] + table[..., :-k, :-k]
    return out.to(x.dtype)


def lift_patches(depth_mm: torch.Tensor, rays: torch.Tensor, radius: int, max_jump_m: float = 0.02):
    """Lift depth crops to points, normals and validity.

    Args:
        depth_mm: (P, H, W) float, whole millimetres, 0 = no measurement (padding beyond a crop is
            0 too). The window sums are taken in millimetres, where float32 adds integers exactly:
            the result does not depend on the padded size or the summation order.
        rays: (P, H, W, 2) normalized undistorted (x, y) of each sample's pixel.
        radius: neighbour offset and averaging window radius, in samples.
        max_jump_m: a neighbour or the window mean farther than this in depth (half of it for the
            mean) makes the sample invalid (silhouette edges, mixed pixels).
    Returns:
        points (P, H, W, 3) metres (the measured ones), normals (P, H, W, 3) unit, facing the
        camera, valid bool (P, H, W).
    """
    s = int(radius)
    p_, h, w = depth_mm.shape
    has = (depth_mm > 0).to(depth_mm.dtype)
    sums = box_sums(torch.stack([depth_mm, has]), s)  # one table for both: (2, P, H, W)
    zs = sums[0] / sums[1].clamp_min(1.0) * 1e-3
    z = depth_mm * 1e-3
    pts = torch.cat([rays * z[..., None], z[..., None]], -1)
    ok = (has > 0) & ((zs - z).abs() < 0.5 * max_jump_m)
    ps = torch.cat([rays * zs[..., None], zs[..., None]], -1)
    zp = F.pad(z, (s, s, s, s))
    pp = F.pad(ps.permute(0, 3, 1, 2), (s, s, s, s)).permute(0, 2, 3, 1)
    right, left = pp[:, s:s + h, 2 * s:2 * s + w], pp[:, s:s + h, 0:w]
    down, up = pp[:, 2 * s:2 * s + h, s:s + w], pp[:, 0:h, s:s + w]
    for zn in (zp[:, s:s + h, 2 * s:2 * s + w], zp[:, s:s + h, 0:w], zp[:, 2 * s:2 * s + h, s:s + w], zp[:, 0:h, s:s + w]):
        ok = ok & (zn > 0) & ((zn - z).abs() < max_jump_m)
    # x right, y down: cross(down - up, right - left) points towards the camera for a frontal plane.
    n = cross3(down - up, right - left)
    norm2 = (n * n).sum(-1)
    ok = ok & (norm2 > 1e-24)
    n = n * torch.rsqrt(norm2.clamp_min(1e-24))[..., None]
    flip = (n * pts).sum(-1) > 0
    n = torch.where(flip[..., None], -n, n)
    return pts, n, ok


@dataclass
class PatchBatch:
    """Lifted depth patches of B streams x C cameras, padded to one size (H, W) samples.

    Attributes:
        points, normals: (B, C, H*W, 3) camera frame.  valid: (B, C, H*W) bool (False in padding, in
            cameras without depth, and in patches with fewer than MIN_PATCH_VALID valid samples).
        origin: (B, C, 2) top-left pixel (x0, y0) of each crop in its image.  size: (B, C, 2) long
            crop width, height in samples.  stride: pixels between samples.  width, height: W, H.
        camera_ok: (B, C) bool, the camera contributes depth.
    """

    points: torch.Tensor
    normals: torch.Tensor
    valid: torch.Tensor
    origin: torch.Tensor
    size: torch.Tensor
    stride: int
    width: int
    height: int
    camera_ok: torch.Tensor

    @classmethod
    def lift(cls, depth_mm: torch.Tensor, ray_grid: torch.Tensor, origin: torch.Tensor, size: torch.Tensor,
             stride: int, radius: int) -> "PatchBatch":
        """Lift (B, C, H, W) uint16 depth crops (millimetres) whose top-left pixels are `origin`
        (B, C, 2), each sample's ray interpolated from its camera's undistortion grid (B, C, 2, Gv, Gu)."""
        b, c, h, w = depth_mm.shape
        dev = origin.device
        j = torch.arange(w, dtype=origin.dtype, device=dev) * float(stride)
        i = torch.arange(h, dtype=origin.dtype, device=dev) * float(stride)
        u = (origin[..., 0, None, None] + j).expand(b, c, h, w).reshape(b * c, h, w)
        v = (origin[..., 1, None, None] + i[:, None]).expand(b, c, h, w).reshape(b * c, h, w)
        rays = sample_rays(ray_grid.reshape(b * c, *ray_grid.shape[2:]), u, v)
        pts, nrm, ok = lift_patches(depth_mm.to(torch.float32).reshape(b * c, h, w), rays, radius)
        ok = ok.reshape(b, c, h * w)
        camera_ok = ok.sum(-1) >= MIN_PATCH_VALID
        return cls(pts.reshape(b, c, h * w, 3), nrm.reshape(b, c, h * w, 3), ok & camera_ok[..., None],
                   origin, size, int(stride), w, h, camera_ok)

    def associate(self, cameras: CameraBatch, points_cam: torch.Tensor, normals_cam: torch.Tensor,
                  gate_m: float, min_normal_cos: float):
        """Projective association of model points with each camera's patch.

        Args:
            points_cam: (B, C, M, 3) model points in each camera's frame, metres.
            normals_cam: (B, C, M, 3) model normals in each camera's frame.
            gate_m: reject pairs farther apart than this (occlusion, background, wrong surface).
            min_normal_cos: reject pairs whose normals disagree more, and model points facing away
                from the camera.
        Returns:
            (ok (B, C, M) float 0/1, target points (B, C, M, 3), target normals (B, C, M, 3)); rows
            with ok 0 hold finite junk.
        """
        u_px, v_px = cameras.project(points_cam)
        s = float(self.stride)
        # Clamped before the integer conversion: a point far outside must not overflow.
        u = torch.round(((u_px - self.origin[..., 0:1]) / s).clamp(-1.0, float(self.width + 1))).long()
        v = torch.round(((v_px - self.origin[..., 1:2]) / s).clamp(-1.0, float(self.height + 1))).long()
        inside = (u >= 0) & (u < self.size[..., 0:1]) & (v >= 0) & (v < self.size[..., 1:2]) & (points_cam[..., 2] > 0)
        idx = torch.where(inside, v * self.width + u, torch.zeros_like(u))
        ok = inside & torch.gather(self.valid, 2, idx)
        idx3 = idx[..., None].expand(*idx.shape, 3)
        p = torch.gather(self.points, 2, idx3)
        n = torch.gather(self.normals, 2, idx3)
        d = points_cam - p
        ok = ok & ((d * d).sum(-1) < gate_m * gate_m)
        ok = ok & ((normals_cam * n).sum(-1) > min_normal_cos) & ((normals_cam * points_cam).sum(-1) < 0)
        return ok.to(p.dtype), p, n


def depth_rows(assoc, cameras: CameraBatch, rp: torch.Tensor, xc: torch.Tensor):
    """Point-to-plane residuals and their pose Jacobian blocks for associated depth samples.

    Args:
        assoc: (ok (B, C, M), targets (B, C, M, 3), target normals (B, C, M, 3)) from `associate`.
        rp: (B, M, 3) model points rotated into the reference frame (R X, before translation).
        xc: (B, C, M, 3) the same points in each camera's frame.
    Returns:
        residual (B, C, M) metres (0 where not associated), d residual / d rotation (B, C, M, 3),
        d residual / d reference-frame point (B, C, M, 3) (= nᵀ R_c).
    """
    ok, p, n = assoc
    res = (n * (xc - p)).sum(-1) * ok
    g_ref = torch.einsum("bcmi,bcij->bcmj", n, cameras.r)
    jw = cross3(rp[:, None], g_ref)
    return res, jw, g_ref
