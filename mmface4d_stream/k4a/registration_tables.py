"""Registration tables: what `DepthToColorRegistration` precomputes per calibration (rays of every
depth pixel rotated into the colour frame, splat block sizes and groups, per-rectangle tables for
a region of interest, their caches) and the per-thread scratch buffers of the numpy kernel.

See `k4a.registration` for the method; the kernels that use these tables are in
`k4a.registration_numpy` and `k4a.registration_torch`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

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


class _TableBuilder:
    """The table-building half of `DepthToColorRegistration` (a mixin: it reads the attributes
    that `DepthToColorRegistration.__init__` sets)."""

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

    def _tables(self, device) -> dict[str, Any]:
        import torch

        key = str(device)
        if key not in self._torch_tables:
            full = self._full
            # One scatter for all groups: for each group, every offset of every member.
            scatter_src = np.concatenate([np.repeat(m[None, :], len(o), axis=0).ravel() for m, o in full.groups])
            scatter_off = np.concatenate([np.repeat(o, len(m)) for m, o in full.groups])
            scatter_dx = np.concatenate(
                [np.repeat(np.array([d[0] for d in ds], np.float32), len(m)) for (m, _), ds in zip(full.groups, full.group_deltas)]
            )
            scatter_dy = np.concatenate(
                [np.repeat(np.array([d[1] for d in ds], np.float32), len(m)) for (m, _), ds in zip(full.groups, full.group_deltas)]
            )
            self._torch_tables[key] = {
                "ray_x": torch.from_numpy(full.ray_x).to(device),
                "ray_y": torch.from_numpy(full.ray_y).to(device),
                "ray_z": torch.from_numpy(full.ray_z).to(device),
                "ray_valid": torch.from_numpy(full.ray_valid).to(device),
                "not_last_column": torch.from_numpy(full.not_last_column).to(device),
                "half_kx": torch.from_numpy(full.half_kx).to(device),
                "half_ky": torch.from_numpy(full.half_ky).to(device),
                "col_max": torch.from_numpy(full.col_max).to(device),
                "row_max": torch.from_numpy(full.row_max).to(device),
                "scatter_src": torch.from_numpy(scatter_src).to(device),
                "scatter_off": torch.from_numpy(scatter_off).to(device),
                "scatter_dx": torch.from_numpy(scatter_dx).to(device),
                "scatter_dy": torch.from_numpy(scatter_dy).to(device),
            }
        return self._torch_tables[key]

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
