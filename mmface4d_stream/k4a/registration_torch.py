"""The torch kernel of depth -> colour registration (any device; the default for GPU tensors):
the same projection, surface gradient and z-buffered splat as the numpy kernel, with torch ops
(`scatter_reduce` amax). See `k4a.registration` for the method.
"""

from __future__ import annotations

from mmface4d_stream.k4a.registration_tables import (
    _MAX_INTERPOLATED_MM,
    _MIN_JACOBIAN_DET,
    _NO_DEPTH,
    _SAME_SURFACE_RATIO,
)


class _TorchKernel:
    """The torch half of `DepthToColorRegistration` (a mixin over its tables)."""

    def _color_projection(self, z_m, rx, ry, rz):
        """Depth-camera z (N,) metres and rotated rays -> color pixels u, v (N,), Z_color (N,) m, ok."""
        tx, ty, tz = (float(v) for v in self._t)
        zc = z_m * rz + tz
        inv = 1.0 / zc
        x = (z_m * rx + tx) * inv
        y = (z_m * ry + ty) * inv
        color = self.calibration.color
        xd, yd, rs = color.distort(x, y)
        u = xd * color.fx + color.cx
        v = yd * color.fy + color.cy
        ok = (zc > 0) & (rs <= color.metric_radius**2)
        return u, v, zc, ok

    # -- depth -> color ---------------------------------------------------------------------

    def _surface_gradient(self, u, v, z, ok):
        """dz/du, dz/dv (mm per color pixel) of the surface at every depth pixel (flat tensors),
        from where its right/left and lower/upper neighbours land in the color image; 0 where no
        neighbour on the same surface exists on either side (`_surface_gradient_numpy`: numpy)."""
        import torch

        zeros = torch.zeros_like

        def forward(a, step):
            out = zeros(a)
            out[:-step] = a[step:] - a[:-step]
            return out

        def backward(a):
            out = zeros(a)
            out[1:] = a[:-1]
            return out

        def pick(step, not_last):
            du, dv, dz = forward(u, step), forward(v, step), forward(z, step)
            ok_f = zeros(ok)
            ok_f[:-step] = ok[step:] & ok[:-step]
            if not_last is not None:
                ok_f &= not_last
            ok_f &= abs(dz) < _SAME_SURFACE_RATIO * z
            if step == 1:
                ok_b = backward(ok_f)
                du = torch.where(ok_f, du, backward(du))
                dv = torch.where(ok_f, dv, backward(dv))
                dz = torch.where(ok_f, dz, backward(dz))
            else:
                ok_b = zeros(ok)
                ok_b[step:] = ok_f[:-step]
                du_b, dv_b, dz_b = zeros(du), zeros(dv), zeros(dz)
                du_b[step:], dv_b[step:], dz_b[step:] = du[:-step], dv[:-step], dz[:-step]
                du, dv, dz = torch.where(ok_f, du, du_b), torch.where(ok_f, dv, dv_b), torch.where(ok_f, dz, dz_b)
            return du, dv, dz, ok_f | ok_b

        not_last = self._tables(u.device)["not_last_column"]
        dux, dvx, dzx, okx = pick(1, not_last)
        duy, dvy, dzy, oky = pick(self.depth_shape[1], None)
        det = dux * dvy - dvx * duy
        valid = okx & oky & (abs(det) > _MIN_JACOBIAN_DET) & (z < _MAX_INTERPOLATED_MM)
        det = torch.where(valid, det, 1.0)
        gu = torch.where(valid, (dzx * dvy - dzy * dvx) / det, 0.0)
        gv = torch.where(valid, (dux * dzy - duy * dzx) / det, 0.0)
        return gu, gv

    def _depth_to_color_torch(self, depth):
        import torch

        tables = self._tables(depth.device)
        flat = depth.reshape(-1)
        z_m = flat.to(torch.float32) * 0.001
        u, v, zc, ok = self._color_projection(z_m, tables["ray_x"], tables["ray_y"], tables["ray_z"])
        # Pixels without a ray are in no scatter group, like in the numpy kernel.
        ok = ok & (flat > 0)
        z_mm = zc * 1000.0
        col = torch.floor(u - tables["half_kx"]) + 1
        row = torch.floor(v - tables["half_ky"]) + 1
        if self.interpolate:
            gu, gv = self._surface_gradient(u, v, z_mm, ok)
            z_mm = z_mm - gu * (u - col) - gv * (v - row)
        col = col + self._pad
        row = row + self._pad
        ok = ok & (col >= 0) & (col <= tables["col_max"]) & (row >= 0) & (row <= tables["row_max"])
        ok = ok & (z_mm >= 0.5) & (z_mm < _NO_DEPTH - 0.5)
        base = torch.where(ok, (row * self._full.canvas_w + col).to(torch.int64), 0)
        src = tables["scatter_src"]
        index = base[src] + tables["scatter_off"]
        if self.interpolate:
            values = z_mm[src] + gu[src] * tables["scatter_dx"] + gv[src] * tables["scatter_dy"]
            values = torch.round(values.clamp(1.0, _NO_DEPTH - 1.0))
        else:
            values = torch.round(z_mm[src])
        # Same encoding as the numpy kernel: 2**16 - z, nearest = largest, empty = 0.
        enc = torch.where(ok[src], 65536 - values.to(torch.int32), 0)
        canvas = torch.zeros(self._full.canvas_h * self._full.canvas_w, dtype=torch.int32, device=depth.device)
        canvas.scatter_reduce_(0, index, enc, reduce="amax", include_self=True)
        hc, wc = self.color_shape
        view = canvas.reshape(self._full.canvas_h, self._full.canvas_w)[self._pad : self._pad + hc, self._pad : self._pad + wc]
        return ((65536 - view) & 0xFFFF).to(torch.uint16)
