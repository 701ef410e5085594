"""The numpy kernel of depth -> colour registration (CPU): project the depth pixels of a table's
rectangle through the colour lens model into per-thread scratch buffers, estimate the surface
gradient, splat blocks with a z-buffer (`np.maximum.at`). See `k4a.registration` for the method.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mmface4d_stream.k4a.registration_tables import (
    _MAX_INTERPOLATED_MM,
    _MIN_JACOBIAN_DET,
    _NO_DEPTH,
    _ROI_GRID_PX,
    _SAME_SURFACE_RATIO,
    _Scratch,
    _Tables,
    _valid_depth_range,
)


class _NumpyKernel:
    """The numpy half of `DepthToColorRegistration` (a mixin over its tables)."""

    def _depth_to_color_roi(self, depth: np.ndarray, roi: tuple[int, int, int, int]) -> np.ndarray:
        """Numpy kernel on the depth pixels whose blocks can reach `roi` (see module docstring)."""
        x0, y0, x1, y1 = roi
        hc, wc = self.color_shape
        g = _ROI_GRID_PX
        box = (x0 // g * g, y0 // g * g, min(wc, -(-x1 // g) * g), min(hc, -(-y1 // g) * g))
        # The frame's depth range bounds where the box's pixels can come from; the range inside
        # that rectangle (often narrower: no far background, no near noise) bounds it tighter.
        # Pixels outside the first rectangle cannot land in the box, so the second holds all
        # that can.
        rect = None
        depth_range = _valid_depth_range(depth)
        if depth_range is not None:
            c0, r0, c1, r1 = rect = self._roi_rect(box, *depth_range) or (0, 0, 0, 0)
            depth_range = _valid_depth_range(depth[r0:r1, c0:c1]) if c1 > c0 and r1 > r0 else None
            rect = None if depth_range is None else self._roi_rect(box, *depth_range)
        if rect is None:
            return np.zeros((y1 - y0, x1 - x0), np.uint16)
        tables = self._roi_tables(rect, box)
        c0, r0, c1, r1 = rect
        canvas = self._depth_to_color_numpy(depth[r0:r1, c0:c1], tables)
        X0, Y0 = box[:2]
        return np.negative(canvas[y0 - Y0 : y1 - Y0, x0 - X0 : x1 - X0])

    def _projection_buffers(self, scratch: _Scratch, n: int) -> dict[str, Any]:
        ws = {name: scratch.view(name, n, np.float32) for name in ("z", "zc", "x", "y", "w0", "w1", "w2", "w3", "w4")}
        ws["ok"] = scratch.view("ok", n, np.bool_)
        ws["tmp_ok"] = scratch.view("tmp_ok", n, np.bool_)
        return ws

    def _workspace(self, tables: _Tables) -> dict[str, Any]:
        """Per-thread scratch arrays sized for `tables`, reused across frames (see
        CameraModel.distort_inplace): views of buffers that grow to the largest size seen."""
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = _Scratch()
        n, m = tables.size, tables.max_group
        ws = self._projection_buffers(scratch, n)
        ws["base"] = scratch.view("base", n, np.int64)
        ws["enc"] = scratch.view("enc", n, np.uint16)
        ws["canvas"] = scratch.view("canvas", tables.canvas_h * tables.canvas_w, np.uint16)
        # One buffer per kind for all groups: a group's scatter is done before the next begins.
        ws["group_base"] = scratch.view("group_base", m, np.int64)
        ws["group_index"] = scratch.view("group_index", m, np.int64)
        ws["group_enc"] = scratch.view("group_enc", m, np.uint16)
        if self.interpolate:
            for name in ("g_t1", "g_t2", "g_det", "g_u", "g_v"):
                ws[name] = scratch.view(name, n, np.float32)
            ws["g_tb"] = scratch.view("g_tb", n, np.bool_)
            for axis in ("x", "y"):
                for name in ("du", "dv", "dz"):
                    ws[f"g_{name}{axis}"] = scratch.view(f"g_{name}{axis}", n, np.float32)
                ws[f"g_okf{axis}"] = scratch.view(f"g_okf{axis}", n, np.bool_)
                ws[f"g_ok{axis}"] = scratch.view(f"g_ok{axis}", n, np.bool_)
            for name in ("group_e", "group_u", "group_v", "group_value"):
                ws[name] = scratch.view(name, m, np.float32)
        return ws

    def _project_numpy(self, depth: np.ndarray, tables: _Tables, ws: dict[str, Any]) -> None:
        """Project the depth pixels of `tables.rect` (depth: that (h, w) part of the image, mm)
        into the color image, in place in the workspace (flat, row by row):
        ws x, y <- color pixel (u, v); zc <- color-camera Z (m); ok <- has depth, has a ray, in
        front of the color camera and within its lens model (not yet: inside the image)."""
        color = self.calibration.color
        tx, ty, tz = (float(v) for v in self._t)
        z, zc, x, y, ok, tmp = ws["z"], ws["zc"], ws["x"], ws["y"], ws["ok"], ws["tmp_ok"]
        shape = (tables.height, tables.width)
        np.multiply(depth, np.float32(0.001), out=z.reshape(shape), casting="unsafe")
        np.multiply(z, tables.ray_z, out=zc)
        zc += tz
        np.greater(zc, 0, out=ok)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = ws["w0"]
            np.divide(1.0, zc, out=inv)
            np.multiply(z, tables.ray_x, out=x)
            x += tx
            x *= inv
            np.multiply(z, tables.ray_y, out=y)
            y += ty
            y *= inv
        rs = color.distort_inplace(x, y, [ws["w0"], ws["w1"], ws["w2"], ws["w3"], ws["w4"]])
        np.less_equal(rs, color.metric_radius**2, out=tmp)
        ok &= tmp
        np.greater(depth, 0, out=tmp.reshape(shape))
        ok &= tmp
        ok &= tables.ray_valid
        x *= color.fx
        x += color.cx
        y *= color.fy
        y += color.cy

    def _surface_gradient_numpy(self, u, v, z, ok, ws, tables: _Tables) -> tuple[np.ndarray, np.ndarray]:
        """`_surface_gradient` for numpy on the pixels of `tables.rect` (its edges play the
        image's edges), in workspace buffers (see `_workspace`)."""
        width = tables.width
        t1, t2, tb = ws["g_t1"], ws["g_t2"], ws["g_tb"]
        diffs = []
        for step, axis in ((1, "x"), (width, "y")):
            du, dv, dz, okf, okd = (ws[f"g_{name}{axis}"] for name in ("du", "dv", "dz", "okf", "ok"))
            for d, a in ((du, u), (dv, v), (dz, z)):
                np.subtract(a[step:], a[:-step], out=d[:-step])
                d[-step:] = 0
            np.logical_and(ok[step:], ok[:-step], out=okf[:-step])
            okf[-step:] = False
            if step == 1:
                okf &= tables.not_last_column
            with np.errstate(invalid="ignore"):
                np.abs(dz, out=t1)
                np.multiply(z, _SAME_SURFACE_RATIO, out=t2)
                np.less(t1, t2, out=tb)
            okf &= tb
            # Where the forward neighbour is unusable, take the backward one (same surface).
            np.logical_not(okf, out=tb)
            tb[:step] = False
            tb[step:] &= okf[:-step]
            # (few pixels: at surface edges; their source pixels are not themselves replaced)
            backward = np.flatnonzero(tb[step:])
            for d in (du, dv, dz):
                d[backward + step] = d[backward]
            np.copyto(okd, okf)
            okd[step:] |= okf[:-step]
            diffs.append((du, dv, dz, okd))
        (dux, dvx, dzx, okx), (duy, dvy, dzy, oky) = diffs
        det, gu, gv = ws["g_det"], ws["g_u"], ws["g_v"]
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            np.multiply(dux, dvy, out=det)
            np.multiply(dvx, duy, out=t1)
            det -= t1
            np.multiply(dzx, dvy, out=gu)
            np.multiply(dzy, dvx, out=t1)
            gu -= t1
            gu /= det
            np.multiply(dux, dzy, out=gv)
            np.multiply(duy, dzx, out=t1)
            gv -= t1
            gv /= det
            np.abs(det, out=t1)
            np.greater(t1, _MIN_JACOBIAN_DET, out=tb)
        tb &= okx
        tb &= oky
        np.less(z, _MAX_INTERPOLATED_MM, out=okx)  # okx is free again
        tb &= okx
        np.logical_not(tb, out=tb)
        np.copyto(gu, 0.0, where=tb)
        np.copyto(gv, 0.0, where=tb)
        return gu, gv

    def _depth_to_color_numpy(self, depth: np.ndarray, tables: _Tables) -> np.ndarray:
        """Depth pixels of `tables.rect` (depth: that (h, w) part of the image, mm) -> the canvas
        over `tables.box`, (Y1 - Y0, X1 - X0) uint16 holding 2**16 - z mm (0: nothing landed;
        `np.negative` decodes). A view of this thread's scratch canvas: valid until its next call."""
        ws = self._workspace(tables)
        self._project_numpy(depth, tables, ws)
        zc, x, y, ok, tmp = ws["zc"], ws["x"], ws["y"], ws["ok"], ws["tmp_ok"]
        zc *= 1000.0  # mm from here on
        if self.interpolate:
            gu, gv = self._surface_gradient_numpy(x, y, zc, ok, ws, tables)
        # col, row <- first column / row whose pixel centre lies in each pixel's block
        col, row = ws["w0"], ws["w1"]
        np.subtract(x, tables.half_kx, out=col)
        np.floor(col, out=col)
        col += 1
        np.subtract(y, tables.half_ky, out=row)
        np.floor(row, out=row)
        row += 1
        if self.interpolate:
            # zc <- depth extrapolated to the block's first pixel centre
            x -= col
            x *= gu
            zc -= x
            y -= row
            y *= gv
            zc -= y
        # Canvas coordinates: the box's corner at (pad, pad) (integers: exact in float32).
        col += self._pad - tables.box[0]
        row += self._pad - tables.box[1]
        for arr, high in ((col, tables.col_max), (row, tables.row_max)):
            np.greater_equal(arr, 0, out=tmp)
            ok &= tmp
            np.less_equal(arr, high, out=tmp)
            ok &= tmp
        np.greater_equal(zc, 0.5, out=tmp)
        ok &= tmp
        np.less(zc, _NO_DEPTH - 0.5, out=tmp)
        ok &= tmp
        row *= tables.canvas_w
        row += col
        base, enc = ws["base"], ws["enc"]
        canvas = ws["canvas"]
        canvas.fill(0)
        # Pixels not drawn (ok False) may hold NaN here; their casts are discarded by `*= ok`.
        with np.errstate(invalid="ignore"):
            np.copyto(base, row, casting="unsafe")
            base *= ok
            if not self.interpolate:
                np.rint(zc, out=zc)
                # z-buffer on encoded values enc = -z (mod 2**16): nearest = largest, and an
                # empty canvas (0) decodes to 0, so neither the init nor the readout needs a mask.
                np.copyto(enc, zc, casting="unsafe")
                np.negative(enc, out=enc)
                enc *= ok
        for (members, offsets), deltas in zip(tables.groups, tables.group_deltas):
            gb, gi, ge = (ws[name][: members.size] for name in ("group_base", "group_index", "group_enc"))
            # mode="clip": with `out`, the default mode="raise" buffers the whole result first.
            np.take(base, members, out=gb, mode="clip")
            if not self.interpolate:
                np.take(enc, members, out=ge, mode="clip")
                # ufunc.at is fast on numpy >= 1.25 when the targets are nearly sorted, as here.
                for offset in offsets:
                    np.add(gb, offset, out=gi)
                    np.maximum.at(canvas, gi, ge)
                continue
            # enc = 2**16 - round(z) = trunc(65536.5 - z): one subtraction per pixel instead of a
            # rint and a negation per block pixel. Undrawn pixels write into the canvas's top
            # margin (base 0), which is never read back. No clipping needed: gradients are at
            # most ~3% of z per pixel and zero beyond _MAX_INTERPOLATED_MM, so a block's values
            # stay within (0, 65535) mm.
            g_e, g_u, g_v, value = (ws[name][: members.size] for name in ("group_e", "group_u", "group_v",
                                                                              "group_value"))
            np.take(zc, members, out=g_e, mode="clip")
            np.subtract(65536.5, g_e, out=g_e)
            np.take(gu, members, out=g_u, mode="clip")
            np.take(gv, members, out=g_v, mode="clip")
            # Offsets run row by row (dx fastest): step the value along instead of recomputing.
            for offset, (dx, dy) in zip(offsets, deltas):
                if dx == 0:
                    if dy:
                        g_e -= g_v
                    np.copyto(value, g_e)
                else:
                    value -= g_u
                with np.errstate(invalid="ignore"):
                    np.copyto(ge, value, casting="unsafe")
                np.add(gb, offset, out=gi)
                np.maximum.at(canvas, gi, ge)
        X0, Y0, X1, Y1 = tables.box
        pad = self._pad
        return canvas.reshape(tables.canvas_h, tables.canvas_w)[pad : pad + Y1 - Y0, pad : pad + X1 - X0]
