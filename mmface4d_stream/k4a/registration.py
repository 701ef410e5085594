"""Depth <-> color registration for one Azure Kinect, without the Kinect SDK.

`DepthToColorRegistration(calibration)` precomputes, once per calibration, the ray of every depth
pixel already rotated into the color camera's frame, so a frame costs: scale rays by depth, add
the baseline, project through the color lens model, z-buffer.

- `depth_to_color(depth)`: depth image (Hd, Wd) uint16 mm -> depth as seen by the color camera,
  (Hc, Wc) uint16 mm (Z in the color camera's frame; 0 = no measurement). Neighbouring depth
  pixels land 1.8 to 3.3 color pixels apart (NFOV unbinned -> 1080p; more towards the edge of
  the depth lens), so each depth pixel is splatted to a block of color pixels around its
  projection as large as that local spacing, and the nearest surface wins where blocks overlap
  (z-buffer via `np.maximum.at` / `scatter_reduce`). Within a block the depth follows the
  surface's local gradient, estimated from where the neighbouring depth pixels land (not across
  depth edges); this plays the part of the SDK's interpolation over the quad between four
  neighbours. `interpolate=False` splats each block flat (faster, cruder on slanted surfaces).
- `depth_to_color(depth, roi=(x0, y0, x1, y1))`: the same registered depth, only inside that
  box of color pixels: (y1 - y0, x1 - x0) uint16 mm, equal to `depth_to_color(depth)[y0:y1,
  x0:x1]`. Only the depth pixels whose blocks can reach the box are splatted: a depth pixel's
  projection moves with its depth along the baseline (parallax, tens of color pixels), so the
  candidates are those whose projections over the frame's range of depths can reach the box
  (bounds precomputed per 8x8 depth pixels at a few depth levels); their rectangle of the depth
  image, plus one pixel for the surface gradient's neighbours, goes through the same kernel with
  tables for that rectangle (cached: a still face rebuilds nothing).
- `color_to_depth(color, depth)`: color image (Hc, Wc, 3) uint8 -> color at every depth pixel
  (Hd, Wd, 3) uint8, bilinearly sampled at the pixel's projection; 0 where the depth pixel has
  no measurement or projects outside the color image. Occlusion is not tested (as in the SDK).

Both accept numpy arrays or torch tensors and return the same kind. Tensors on a GPU are
processed by torch ops on that device (`scatter_reduce` amax for the z-buffer); CPU tensors go
through the numpy kernel (zero-copy), which is faster on a CPU than torch's per-op dispatch,
unless `backend="torch"` is asked for.

Accuracy (real calibration, NFOV unbinned -> 1080p, synthetic planes at 0.7-0.8 m, input
depth rounded to mm): registered points lie on the true plane with a mean offset under 0.1 mm,
median 0.2-0.3 mm, 99th percentile 0.5-1.2 mm up to a 40 degree slant (flat blocks: mean offset
-0.3 mm and 99th percentile ~3 mm on that slant).

Speed: the numpy kernel reuses per-thread scratch arrays between frames. Fresh large
temporaries are mapped and unmapped by glibc on every allocation, and on a loaded machine those
page faults cost several times the arithmetic (10 ms vs 1.5 ms for the lens model alone).
A face box of 300-450 color px (NFOV unbinned -> 1080p) registers in ~1.6-4 ms (more when the
frame's depths spread wide) against ~18-20 ms for the whole frame; a box on a new 16 px grid
cell costs ~1 ms of tables, a depth level not seen before ~12 ms (once per calibration; a frame
spans 3-7 levels).
One object may be shared by threads (the scratch arrays are per thread).
"""

from __future__ import annotations

import logging
import math
import operator
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmface4d_stream.arrays import is_torch, where
from mmface4d_stream.k4a.calibration import K4aCalibration

log = logging.getLogger(__name__)

_NO_DEPTH = np.iinfo(np.uint16).max  # depths must stay below this (uint16 mm, 0 = none)
# Neighbouring depth pixels whose depths differ by more than this fraction are taken to lie on
# different surfaces (no interpolation across them): the SDK's bound for an 85 degree slant.
_SAME_SURFACE_RATIO = 0.047
# Below this |det| (px²) two neighbours' projections are too degenerate to give a gradient.
_MIN_JACOBIAN_DET = 0.25
# Depths beyond this are splatted flat (a Kinect measures up to ~10 m): keeps every
# extrapolated value inside the uint16 range without clipping each block pixel.
_MAX_INTERPOLATED_MM = 30000.0
# ROI registration (`_roi_rect`): the color box is widened to this grid (color px) and the depth
# rectangle to tiles of _TILE_PX depth px, so a face moving a little reuses its tables. Depth
# levels are spaced so that a projection moves _SEGMENT_TRACK_PX color px from one to the next;
# boxes behind depths nearer than level _MAX_LEVEL take the whole depth image.
_ROI_GRID_PX = 16
_TILE_PX = 8
_SEGMENT_TRACK_PX = 32.0
_MAX_LEVEL = 64
# Color px added around the box beyond the largest block's reach: between two levels a
# projection bows off the box spanned by its ends by under 0.1 px (lens distortion over a 32 px
# track, real calibration, 1080p: tests/k4a/test_registration.py) and float32 rounds ~1e-4 px.
_ROI_SAFETY_PX = 2.0
_TABLE_CACHE = 8


@dataclass(eq=False)
class _Tables:
    """Per-pixel tables of one rectangle of the depth image splatted onto one color canvas.

    rect (c0, r0, c1, r1): depth pixels [r0:r1, c0:c1], flattened row by row (n = h * w);
    box (X0, Y0, X1, Y1): color pixels the canvas covers, with `pad` more on every side.
    Arrays are (n,): rays rotated into the color frame (float32, Z of the depth ray = 1), ray
    validity, not-last-column mask, half block sizes and the largest block corner per pixel
    (canvas coordinates); groups: (members (m,) int64 raster order, canvas offsets) per block
    shape, with the block's (dx, dy) deltas.
    """

    rect: tuple[int, int, int, int]
    box: tuple[int, int, int, int]
    ray_x: np.ndarray
    ray_y: np.ndarray
    ray_z: np.ndarray
    ray_valid: np.ndarray
    not_last_column: np.ndarray
    half_kx: np.ndarray
    half_ky: np.ndarray
    col_max: np.ndarray
    row_max: np.ndarray
    groups: list[tuple[np.ndarray, np.ndarray]]
    group_deltas: list[list[tuple[int, int]]]
    canvas_w: int
    canvas_h: int

    @property
    def width(self) -> int:
        return self.rect[2] - self.rect[0]

    @property
    def height(self) -> int:
        return self.rect[3] - self.rect[1]

    @property
    def size(self) -> int:
        return self.width * self.height

    @property
    def max_group(self) -> int:
        return max((m.size for m, _ in self.groups), default=0)


class _Scratch:
    """Scratch arrays of one thread, grown on demand: `view(name, n, dtype)` is the first n
    elements of a buffer kept between frames (see `DepthToColorRegistration._workspace`)."""

    def __init__(self):
        self._buffers: dict[str, np.ndarray] = {}

    def view(self, name: str, n: int, dtype) -> np.ndarray:
        buffer = self._buffers.get(name)
        if buffer is None or buffer.size < n or buffer.dtype != dtype:
            buffer = np.empty(max(n, 1), dtype)
            self._buffers[name] = buffer
        return buffer[:n]


class DepthToColorRegistration:
    """Per-calibration tables and per-frame depth <-> color mapping (numpy or torch).

    Footprints: each depth pixel covers a kx x ky block of color pixels, kx and ky the ceiling of
    the color-pixel spacing to its neighbours (on a surface facing the camera at 1 m) times
    `footprint_scale`; the spacing grows towards the edge of the depth lens, so blocks do too
    (NFOV unbinned -> 1080p: 2x2 in the centre, up to 5x5 in the corners). `footprint=k` forces
    k x k everywhere instead. Scales above 1 close the gaps left on surfaces slanted beyond
    ~60 degrees. `interpolate`: block depths follow the local surface gradient (default) or are
    flat.
    """

    _MAX_FOOTPRINT = 16

    def __init__(
        self,
        calibration: K4aCalibration,
        footprint: int | None = None,
        footprint_scale: float = 1.0,
        interpolate: bool = True,
    ):
        if not isinstance(calibration, K4aCalibration):
            raise ValueError(f"expected a K4aCalibration, got {type(calibration).__name__}.")
        if footprint is not None and not (
            isinstance(footprint, (int, np.integer)) and 1 <= footprint <= self._MAX_FOOTPRINT
        ):
            raise ValueError(f"footprint must be an integer from 1 to {self._MAX_FOOTPRINT} color pixels, got {footprint!r}.")
        if not (0 < footprint_scale <= 4):
            raise ValueError(f"footprint_scale must be in (0, 4], got {footprint_scale!r}.")
        self.calibration = calibration
        self.interpolate = bool(interpolate)
        depth, color = calibration.depth, calibration.color
        rays, valid = depth.pixel_rays()  # (Hd, Wd, 3) float64, Z = 1
        T = calibration.T_color_from_depth
        rotated = rays @ T.R.T
        self._t = T.t.astype(np.float32)
        self._depth_rays = rays.astype(np.float32)
        # Per frame, X_color = z * rotated_ray + t: each coordinate contiguous for speed, kept as
        # row-major 2-D tables of the whole depth image that `_rect_tables` slices.
        self._ray_2d = [np.ascontiguousarray(rotated[..., i], dtype=np.float32) for i in range(3)]
        self._valid_2d = np.ascontiguousarray(valid)

        if footprint is None:
            kx, ky = self._local_footprints(rotated, valid, footprint_scale)
        else:
            kx = ky = np.full(valid.shape, int(footprint), dtype=np.int64)
        self._kx_2d, self._ky_2d = kx, ky
        self.max_footprint = int(max(kx.max(), ky.max()))
        self._pad = self.max_footprint
        full = self._rect_tables((0, 0, depth.width, depth.height), (0, 0, color.width, color.height))
        self._full = full
        self._canvas_w, self._canvas_h = full.canvas_w, full.canvas_h
        # Flat full-image tables (torch path, color_pixels).
        self._ray_x, self._ray_y, self._ray_z, self._ray_valid = full.ray_x, full.ray_y, full.ray_z, full.ray_valid
        self._half_kx, self._half_ky = full.half_kx, full.half_ky
        self._col_max, self._row_max = full.col_max, full.row_max
        self._groups, self._group_deltas = full.groups, full.group_deltas
        self._not_last_column = full.not_last_column
        # ROI registration caches (shared by threads, guarded by the lock).
        self._cache_lock = threading.Lock()
        # Inverse-depth step (1/mm) between levels: the color focal length times the baseline
        # turns an inverse depth into the parallax in color pixels.
        parallax = max(color.fx, color.fy) * float(np.linalg.norm(T.t)) * 1000.0
        self._level_step = min(_SEGMENT_TRACK_PX / max(parallax, 1e-9), 0.5)
        self._level_cache: dict[int, tuple[np.ndarray, ...]] = {}
        self._valid_tiles = _tile_reduce(self._valid_2d, np.logical_or, False)
        self._table_cache: OrderedDict[tuple, _Tables] = OrderedDict()
        self._torch_tables: dict[str, dict[str, Any]] = {}
        self._local = threading.local()
        log.debug(
            "registration %s depth -> %s color: footprints up to %dx%d",
            calibration.depth_mode.value, calibration.color_resolution.value, self._pad, self._pad,
        )

    # -- setup ------------------------------------------------------------------------------

    def _local_footprints(self, rotated: np.ndarray, valid: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
        """Per depth pixel (kx, ky): ceil of the color-pixel spacing to its neighbours at 1 m."""
        color = self.calibration.color
        pixels, ok = color.project(rotated + self.calibration.T_color_from_depth.t)
        ok = ok & valid
        u = np.where(ok, pixels[..., 0], np.nan)
        v = np.where(ok, pixels[..., 1], np.nan)
        du = np.abs(np.diff(u, axis=1))
        dv = np.abs(np.diff(v, axis=0))
        # A pixel's block must reach halfway to its farther neighbour on each side.
        sx = np.fmax(np.pad(du, ((0, 0), (1, 0)), constant_values=np.nan), np.pad(du, ((0, 0), (0, 1)), constant_values=np.nan))
        sy = np.fmax(np.pad(dv, ((1, 0), (0, 0)), constant_values=np.nan), np.pad(dv, ((0, 1), (0, 0)), constant_values=np.nan))
        sx = np.nan_to_num(sx, nan=1.0)
        sy = np.nan_to_num(sy, nan=1.0)
        kx = np.clip(np.ceil(sx * scale - 1e-3), 1, self._MAX_FOOTPRINT).astype(np.int64)
        ky = np.clip(np.ceil(sy * scale - 1e-3), 1, self._MAX_FOOTPRINT).astype(np.int64)
        return kx, ky

    def _rect_tables(self, rect: tuple[int, int, int, int], box: tuple[int, int, int, int]) -> _Tables:
        """Tables of depth pixels rect (c0, r0, c1, r1) splatted onto a canvas over color box
        (X0, Y0, X1, Y1) plus `pad` px on every side (blocks that leave it are not drawn)."""
        c0, r0, c1, r1 = rect
        X0, Y0, X1, Y1 = box
        pad = self._pad
        canvas_w, canvas_h = X1 - X0 + 2 * pad, Y1 - Y0 + 2 * pad
        # Views, not copies, for the whole image (the arrays are contiguous).
        sub = lambda a: np.ascontiguousarray(a[r0:r1, c0:c1]).reshape(-1)  # noqa: E731
        kx, ky, valid = sub(self._kx_2d), sub(self._ky_2d), sub(self._valid_2d)
        width = c1 - c0
        groups, group_deltas = [], []
        shape_id = kx * (self._MAX_FOOTPRINT + 1) + ky
        for sid in np.flatnonzero(np.bincount(shape_id)):  # the shapes present (np.unique sorts: slower)
            gx, gy = divmod(int(sid), self._MAX_FOOTPRINT + 1)
            members = np.flatnonzero((shape_id == sid) & valid)
            if members.size == 0:
                continue
            deltas = [(dx, dy) for dy in range(gy) for dx in range(gx)]
            offsets = np.array([dy * canvas_w + dx for dx, dy in deltas], dtype=np.int64)
            groups.append((members, offsets))
            group_deltas.append(deltas)
        return _Tables(
            rect=tuple(rect), box=tuple(box),
            ray_x=sub(self._ray_2d[0]), ray_y=sub(self._ray_2d[1]), ray_z=sub(self._ray_2d[2]), ray_valid=valid,
            not_last_column=(np.arange(valid.size) % width) != width - 1,
            # Block of pixel centres inside [u - kx/2, u + kx/2) starts at floor(u - kx/2) + 1.
            half_kx=(kx / 2.0).astype(np.float32), half_ky=(ky / 2.0).astype(np.float32),
            col_max=(canvas_w - kx).astype(np.float32), row_max=(canvas_h - ky).astype(np.float32),
            # Pixels grouped by block shape (raster order kept inside a group: cache-friendly scatter).
            groups=groups, group_deltas=group_deltas, canvas_w=canvas_w, canvas_h=canvas_h,
        )

    @property
    def depth_shape(self) -> tuple[int, int]:
        """(Hd, Wd)"""
        return self.calibration.depth.height, self.calibration.depth.width

    @property
    def color_shape(self) -> tuple[int, int]:
        """(Hc, Wc)"""
        return self.calibration.color.height, self.calibration.color.width

    def _check_depth(self, depth) -> None:
        if tuple(depth.shape) != self.depth_shape:
            raise ValueError(
                f"depth image must have shape {self.depth_shape} for {self.calibration.depth_mode.value}, "
                f"got {tuple(depth.shape)}."
            )
        kind = str(depth.dtype)
        if not any(name in kind for name in ("uint16", "int16", "int32", "int64")):
            raise ValueError(f"depth image must hold integer millimetres (uint16), got dtype {kind}.")

    def _tables(self, device) -> dict[str, Any]:
        import torch

        key = str(device)
        if key not in self._torch_tables:
            # One scatter for all groups: for each group, every offset of every member.
            scatter_src = np.concatenate([np.repeat(m[None, :], len(o), axis=0).ravel() for m, o in self._groups])
            scatter_off = np.concatenate([np.repeat(o, len(m)) for m, o in self._groups])
            scatter_dx = np.concatenate(
                [np.repeat(np.array([d[0] for d in ds], np.float32), len(m)) for (m, _), ds in zip(self._groups, self._group_deltas)]
            )
            scatter_dy = np.concatenate(
                [np.repeat(np.array([d[1] for d in ds], np.float32), len(m)) for (m, _), ds in zip(self._groups, self._group_deltas)]
            )
            self._torch_tables[key] = {
                "ray_x": torch.from_numpy(self._ray_x).to(device),
                "ray_y": torch.from_numpy(self._ray_y).to(device),
                "ray_z": torch.from_numpy(self._ray_z).to(device),
                "ray_valid": torch.from_numpy(self._ray_valid).to(device),
                "not_last_column": torch.from_numpy(self._not_last_column).to(device),
                "half_kx": torch.from_numpy(self._half_kx).to(device),
                "half_ky": torch.from_numpy(self._half_ky).to(device),
                "col_max": torch.from_numpy(self._col_max).to(device),
                "row_max": torch.from_numpy(self._row_max).to(device),
                "scatter_src": torch.from_numpy(scatter_src).to(device),
                "scatter_off": torch.from_numpy(scatter_off).to(device),
                "scatter_dx": torch.from_numpy(scatter_dx).to(device),
                "scatter_dy": torch.from_numpy(scatter_dy).to(device),
            }
        return self._torch_tables[key]

    # -- shared geometry --------------------------------------------------------------------

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
        """dz/du, dz/dv (mm per color pixel) of the surface at every depth pixel (flat arrays,
        numpy or torch), from where its right/left and lower/upper neighbours land in the color
        image; 0 where no neighbour on the same surface exists on either side."""
        if is_torch(u):
            import torch

            zeros = torch.zeros_like
        else:
            zeros = np.zeros_like

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
                du = where(ok_f, du, backward(du))
                dv = where(ok_f, dv, backward(dv))
                dz = where(ok_f, dz, backward(dz))
            else:
                ok_b = zeros(ok)
                ok_b[step:] = ok_f[:-step]
                du_b, dv_b, dz_b = zeros(du), zeros(dv), zeros(dz)
                du_b[step:], dv_b[step:], dz_b[step:] = du[:-step], dv[:-step], dz[:-step]
                du, dv, dz = where(ok_f, du, du_b), where(ok_f, dv, dv_b), where(ok_f, dz, dz_b)
            return du, dv, dz, ok_f | ok_b

        not_last = self._not_last_column
        if is_torch(u):
            not_last = self._tables(u.device)["not_last_column"]
        dux, dvx, dzx, okx = pick(1, not_last)
        duy, dvy, dzy, oky = pick(self.depth_shape[1], None)
        det = dux * dvy - dvx * duy
        valid = okx & oky & (abs(det) > _MIN_JACOBIAN_DET) & (z < _MAX_INTERPOLATED_MM)
        det = where(valid, det, 1.0)
        gu = where(valid, (dzx * dvy - dzy * dvx) / det, 0.0)
        gv = where(valid, (dux * dzy - duy * dzx) / det, 0.0)
        return gu, gv

    def depth_to_color(self, depth, *, roi=None, backend: str = "auto"):
        """Depth (Hd, Wd) uint16 mm -> registered depth (Hc, Wc) uint16 mm in the color camera.

        Values are Z in the color camera's frame, rounded to the millimetre; 0 where no depth
        pixel lands. numpy in -> numpy out; torch in -> torch (same device) out.
        `roi` (x0, y0, x1, y1) integer color pixels, 0 <= x0 < x1 <= Wc, 0 <= y0 < y1 <= Hc:
        only that box, (y1 - y0, x1 - x0), equal to the full result's `[y0:y1, x0:x1]` and much
        cheaper for a small box on the numpy kernel (torch ops register the full frame and slice).
        `backend`: "auto" runs CPU tensors through the numpy kernel (faster on CPU, shares
        memory) and other devices through torch ops; "torch" forces torch ops on CPU too.
        """
        self._check_depth(depth)
        if backend not in ("auto", "torch"):
            raise ValueError(f"backend must be 'auto' or 'torch', got {backend!r}.")
        box = None if roi is None else self._check_roi(roi)
        if is_torch(depth):
            if backend == "auto" and depth.device.type == "cpu":
                import torch

                return torch.from_numpy(self.depth_to_color(depth.numpy(), roi=box))
            out = self._depth_to_color_torch(depth)
            if box is not None:
                x0, y0, x1, y1 = box
                out = out[y0:y1, x0:x1].contiguous()
            return out
        depth = np.asarray(depth)
        if box is not None:
            return self._depth_to_color_roi(depth, box)
        return np.negative(self._depth_to_color_numpy(depth, self._full))

    def _check_roi(self, roi) -> tuple[int, int, int, int]:
        hc, wc = self.color_shape
        try:
            x0, y0, x1, y1 = (operator.index(v) for v in roi)
        except (TypeError, ValueError):
            raise ValueError(f"roi must be (x0, y0, x1, y1) integer color pixels, got {roi!r}.") from None
        if not (0 <= x0 < x1 <= wc and 0 <= y0 < y1 <= hc):
            raise ValueError(
                f"roi (x0, y0, x1, y1) = {(x0, y0, x1, y1)} is not a non-empty box inside the {wc}x{hc} color "
                f"image (need 0 <= x0 < x1 <= {wc} and 0 <= y0 < y1 <= {hc})."
            )
        return x0, y0, x1, y1

    # -- region of interest -------------------------------------------------------------------

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

    def _roi_rect(self, box, z_min: int, z_max: int) -> tuple[int, int, int, int] | None:
        """Depth rectangle (c0, r0, c1, r1) holding every depth pixel whose block can reach color
        `box` (X0, Y0, X1, Y1) when depths lie in [z_min, z_max] mm; None: none can.

        With depth, a pixel's projection moves along its epipolar line, near linearly in inverse
        depth. Levels j = 0, 1, ... sit at inverse depths j * `_level_step` (level 0: infinity),
        one `_SEGMENT_TRACK_PX` track apart; between two levels a projection stays within the
        box spanned by its ends, up to lens-distortion bowing far below `_ROI_SAFETY_PX`. So the
        levels bracketing [z_min, z_max] bound where each pixel can land: per tile of
        `_TILE_PX`² depth pixels the extreme u, v over those levels, kept per level. Tiles where
        a pixel leaves the color lens model at some level are kept (its path is not known).
        """
        step = self._level_step
        j_lo = math.floor(1.0 / z_max / step)
        j_hi = math.ceil(1.0 / z_min / step)
        hd, wd = self.depth_shape
        if j_hi > _MAX_LEVEL:  # depths so near that the tracks run across the image
            return 0, 0, wd, hd
        levels = [self._level_tiles(j) for j in range(j_lo, j_hi + 1)]
        u_min = np.minimum.reduce([level[0] for level in levels])
        u_max = np.maximum.reduce([level[1] for level in levels])
        v_min = np.minimum.reduce([level[2] for level in levels])
        v_max = np.maximum.reduce([level[3] for level in levels])
        X0, Y0, X1, Y1 = box
        # A block of kx pixels covers the pixel centres in (u - kx/2, u + kx/2].
        reach = self._pad / 2.0 + _ROI_SAFETY_PX
        hit = (u_max >= X0 - reach) & (u_min <= X1 - 1 + reach) & (v_max >= Y0 - reach) & (v_min <= Y1 - 1 + reach)
        for level in levels:
            hit |= level[4]
        hit &= self._valid_tiles
        rows = np.flatnonzero(hit.any(axis=1))
        if rows.size == 0:
            return None
        cols = np.flatnonzero(hit.any(axis=0))
        t = _TILE_PX
        # One more pixel each side: the surface gradient reads the 4 neighbours.
        return (max(0, int(cols[0]) * t - 1), max(0, int(rows[0]) * t - 1),
                min(wd, (int(cols[-1]) + 1) * t + 1), min(hd, (int(rows[-1]) + 1) * t + 1))

    def _level_tiles(self, j: int) -> tuple[np.ndarray, ...]:
        """Every depth pixel projected at level j's depth, reduced per tile of `_TILE_PX`² depth
        pixels: u_min, u_max, v_min, v_max (Ty, Tx) float32 color pixels over the tile's pixels
        that project within the color lens model (+-inf: none), and unknown (Ty, Tx): a pixel
        with a ray does not. Cached per level (~100 kB each for NFOV unbinned depth)."""
        with self._cache_lock:
            tiles = self._level_cache.get(j)
        if tiles is not None:
            return tiles
        hd, wd = self.depth_shape
        z_mm = 1e12 if j == 0 else 1.0 / (j * self._level_step)
        ws = self._projection_buffers(_Scratch(), hd * wd)
        self._project_numpy(np.full((hd, wd), z_mm), self._full, ws)
        u, v, ok = (ws[name].reshape(hd, wd) for name in ("x", "y", "ok"))
        tiles = (
            _tile_reduce(np.where(ok, u, np.inf), np.minimum, np.inf),
            _tile_reduce(np.where(ok, u, -np.inf), np.maximum, -np.inf),
            _tile_reduce(np.where(ok, v, np.inf), np.minimum, np.inf),
            _tile_reduce(np.where(ok, v, -np.inf), np.maximum, -np.inf),
            _tile_reduce(self._valid_2d & ~ok, np.logical_or, False),
        )
        with self._cache_lock:
            return self._level_cache.setdefault(j, tiles)

    def _roi_tables(self, rect, box) -> _Tables:
        with self._cache_lock:
            key = (rect, box)
            tables = self._table_cache.get(key)
            if tables is None:
                tables = self._table_cache[key] = self._rect_tables(rect, box)
                if len(self._table_cache) > _TABLE_CACHE:
                    self._table_cache.popitem(last=False)
                log.debug("registration tables for depth %s -> color %s", rect, box)
            else:
                self._table_cache.move_to_end(key)
            return tables

    # -- numpy kernel -------------------------------------------------------------------------

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
        base = torch.where(ok, (row * self._canvas_w + col).to(torch.int64), 0)
        src = tables["scatter_src"]
        index = base[src] + tables["scatter_off"]
        if self.interpolate:
            values = z_mm[src] + gu[src] * tables["scatter_dx"] + gv[src] * tables["scatter_dy"]
            values = torch.round(values.clamp(1.0, _NO_DEPTH - 1.0))
        else:
            values = torch.round(z_mm[src])
        # Same encoding as the numpy kernel: 2**16 - z, nearest = largest, empty = 0.
        enc = torch.where(ok[src], 65536 - values.to(torch.int32), 0)
        canvas = torch.zeros(self._canvas_h * self._canvas_w, dtype=torch.int32, device=depth.device)
        canvas.scatter_reduce_(0, index, enc, reduce="amax", include_self=True)
        hc, wc = self.color_shape
        view = canvas.reshape(self._canvas_h, self._canvas_w)[self._pad : self._pad + hc, self._pad : self._pad + wc]
        return ((65536 - view) & 0xFFFF).to(torch.uint16)

    # -- color -> depth ---------------------------------------------------------------------

    def color_pixels(self, depth):
        """Where every depth pixel lands in the color image.

        Depth (Hd, Wd) uint16 mm -> (pixels (Hd, Wd, 2) float32 color (u, v), valid (Hd, Wd)):
        valid where the pixel has depth and projects inside the color image.
        """
        self._check_depth(depth)
        if is_torch(depth):
            import torch

            tables = self._tables(depth.device)
            flat = depth.reshape(-1)
            z_m = flat.to(torch.float32) * 0.001
            u, v, _, ok = self._color_projection(z_m, tables["ray_x"], tables["ray_y"], tables["ray_z"])
            ok = ok & (flat > 0) & tables["ray_valid"]
            pixels = torch.stack([u, v], dim=-1)
        else:
            ws = self._workspace(self._full)
            self._project_numpy(np.asarray(depth), self._full, ws)
            u, v, ok = ws["x"].copy(), ws["y"].copy(), ws["ok"].copy()
            pixels = np.stack([u, v], axis=-1)
        ok = ok & self.calibration.color.inside(u, v)
        hd, wd = self.depth_shape
        return pixels.reshape(hd, wd, 2), ok.reshape(hd, wd)

    def color_to_depth(self, color, depth, *, backend: str = "auto"):
        """Color (Hc, Wc, C) uint8 and depth (Hd, Wd) uint16 mm -> color per depth pixel (Hd, Wd, C) uint8.

        Bilinear sampling at each depth pixel's projection; 0 where the depth pixel has no
        measurement or lands outside the color image. numpy or torch (same device) in and out;
        `backend` as in `depth_to_color`.
        """
        hc, wc = self.color_shape
        if tuple(color.shape[:2]) != (hc, wc) or len(color.shape) not in (2, 3):
            raise ValueError(f"color image must have shape ({hc}, {wc}, C), got {tuple(color.shape)}.")
        if "uint8" not in str(color.dtype):
            raise ValueError(f"color image must be uint8, got dtype {color.dtype}.")
        if is_torch(color) != is_torch(depth):
            raise ValueError("color and depth must both be numpy arrays or both torch tensors.")
        if backend not in ("auto", "torch"):
            raise ValueError(f"backend must be 'auto' or 'torch', got {backend!r}.")
        if is_torch(color) and backend == "auto" and color.device.type == "cpu":
            import torch

            return torch.from_numpy(self.color_to_depth(color.numpy(), depth.numpy()))
        pixels, ok = self.color_pixels(depth)
        squeeze = len(color.shape) == 2
        if is_torch(color):
            import torch

            img = color.reshape(hc, wc, -1)
            # Clamp so that pixels in the outer half-pixel ring sample the border; invalid
            # pixels (possibly NaN) sample pixel 0 and are zeroed below.
            u = torch.where(ok, pixels[..., 0], 0.0).clamp(0, wc - 1)
            v = torch.where(ok, pixels[..., 1], 0.0).clamp(0, hc - 1)
            u0 = u.floor().clamp(max=wc - 2).to(torch.int64)
            v0 = v.floor().clamp(max=hc - 2).to(torch.int64)
            fu = (u - u0)[..., None]
            fv = (v - v0)[..., None]
            f = img.to(torch.float32)
            top = f[v0, u0] * (1 - fu) + f[v0, u0 + 1] * fu
            bottom = f[v0 + 1, u0] * (1 - fu) + f[v0 + 1, u0 + 1] * fu
            out = torch.round(top * (1 - fv) + bottom * fv).clamp(0, 255).to(torch.uint8)
            out = torch.where(ok[..., None], out, torch.zeros_like(out))
        else:
            img = np.ascontiguousarray(color).reshape(-1)
            channels = 1 if squeeze else color.shape[2]
            hd, wd = self.depth_shape
            out = np.zeros((hd * wd, channels), np.uint8)
            sel = np.flatnonzero(ok.reshape(-1))
            u = np.clip(pixels.reshape(-1, 2)[sel, 0], 0, wc - 1)
            v = np.clip(pixels.reshape(-1, 2)[sel, 1], 0, hc - 1)
            u0 = np.minimum(u.astype(np.int64), wc - 2)  # u >= 0: truncation is floor
            v0 = np.minimum(v.astype(np.int64), hc - 2)
            fu = u - u0.astype(np.float32)  # float32 throughout (int64 would promote to float64)
            fv = v - v0.astype(np.float32)
            weights = ((1 - fu) * (1 - fv), fu * (1 - fv), (1 - fu) * fv, fu * fv)
            i00 = (v0 * wc + u0) * channels
            corners = (0, channels, wc * channels, (wc + 1) * channels)
            # One flat 1-D gather per corner and channel: far cheaper than (N, C) fancy indexing.
            index = np.empty_like(i00)
            gathered = np.empty(sel.size, np.uint8)
            acc = np.empty(sel.size, np.float32)
            term = np.empty(sel.size, np.float32)
            result = np.empty((sel.size, channels), np.uint8)
            for c in range(channels):
                acc.fill(0.5)  # rounds on the truncating cast below
                for corner, weight in zip(corners, weights):
                    np.add(i00, corner + c, out=index)
                    np.take(img, index, out=gathered, mode="clip")
                    np.multiply(gathered, weight, out=term)
                    acc += term
                np.minimum(acc, 255.0, out=acc)
                np.copyto(result[:, c], acc, casting="unsafe")
            out[sel] = result
            out = out.reshape(hd, wd, channels)
        return out[..., 0] if squeeze else out

    # -- points -----------------------------------------------------------------------------

    def depth_points(self, depth):
        """Depth (Hd, Wd) uint16 mm -> points (Hd, Wd, 3) float32 metres in the depth camera's
        frame (zeros where there is no measurement or the pixel's ray is undefined)."""
        self._check_depth(depth)
        if is_torch(depth):
            import torch

            tables = self._tables(depth.device)
            if "rays" not in tables:
                tables["rays"] = torch.from_numpy(self._depth_rays).to(depth.device)
            z = depth.to(torch.float32) * 0.001
            return tables["rays"] * z[..., None]
        z = np.asarray(depth).astype(np.float32) * np.float32(0.001)
        return self._depth_rays * z[..., None]


def _tile_reduce(a: np.ndarray, ufunc, fill) -> np.ndarray:
    """(H, W) -> (ceil(H / _TILE_PX), ceil(W / _TILE_PX)): `ufunc` over each tile (`fill` pads)."""
    t = _TILE_PX
    h, w = a.shape
    padded = np.pad(a, ((0, -h % t), (0, -w % t)), constant_values=fill)
    return ufunc.reduce(ufunc.reduce(padded.reshape(padded.shape[0] // t, t, padded.shape[1] // t, t), axis=3), axis=1)


def _valid_depth_range(depth: np.ndarray) -> tuple[int, int] | None:
    """(smallest, largest) depth > 0 of an integer depth image (mm), or None when it has none."""
    if depth.size == 0:
        return None
    high = int(depth.max())
    if high <= 0:
        return None
    if depth.dtype == np.uint16:
        low = int(np.subtract(depth, 1, dtype=np.uint16).min()) + 1  # 0 wraps to the top
    else:
        low = int(np.min(depth, where=depth > 0, initial=high))
    return low, high


def register_depth_to_color(depth, calibration: K4aCalibration):
    """`calibration.registration.depth_to_color(depth)`: the calibration builds its registration
    tables once and keeps them."""
    return calibration.registration.depth_to_color(depth)
