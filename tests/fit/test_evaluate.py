"""Accuracy evaluation: whole-face and mouth-region distances, jitter, on meshes with known errors."""

from __future__ import annotations

import numpy as np
import pytest

from mmface4d_stream.fit.evaluate import MOUTH_CORNERS, MOUTH_RADIUS_M, evaluate_sequence
from mmface4d_stream.formats.mesh_nut import MeshNutWriter

pytest.importorskip("open3d")


def _grid(n: int = 24, spacing: float = 0.004) -> tuple[np.ndarray, np.ndarray]:
    """A flat n x n grid at z = 0.6 m (vertices (n², 3), triangles)."""
    u, v = np.meshgrid(np.arange(n), np.arange(n))
    verts = np.stack([(u.ravel() - n / 2) * spacing, (v.ravel() - n / 2) * spacing, np.full(n * n, 0.6)], 1)
    i = (v[:-1, :-1] * n + u[:-1, :-1]).ravel()
    faces = np.concatenate([np.stack([i, i + 1, i + n], 1), np.stack([i + 1, i + n + 1, i + n], 1)])
    return verts.astype(np.float32), faces.astype(np.int32)


def test_mouth_region_and_jitter_see_known_errors(tmp_path):
    verts, faces = _grid()
    corners = verts[list(MOUTH_CORNERS)]
    near = (np.linalg.norm(verts[:, None] - corners[None], axis=-1).min(1) <= MOUTH_RADIUS_M)
    assert 0 < near.sum() < len(verts)  # the region is a part of the face
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    np.save(gt_dir / "faces.npy", faces)
    recon_prefix = tmp_path / "recon"
    np.save(f"{recon_prefix}_faces.npy", faces)
    frames = 6
    with MeshNutWriter(gt_dir / "mesh") as gt, MeshNutWriter(recon_prefix) as recon:
        for t in range(frames):
            gt.write(verts)
            moved = verts.copy()
            # 2 mm off the surface in the lip region, alternating sign: a shaking mouth.
            moved[near, 2] += 0.002 * (1 if t % 2 else -1)
            recon.write(moved)
    error = evaluate_sequence(recon_prefix, gt_dir)
    assert error.frames == frames
    assert error.mouth_recon_to_gt.mean_mm == pytest.approx(2.0, abs=0.05)
    whole = error.recon_to_gt.mean_mm
    assert whole == pytest.approx(2.0 * near.mean(), abs=0.05)  # only the mouth is off
    assert error.mouth_gt_to_recon.mean_mm > 1.5
    # Jitter: |x(t+1) - 2x(t) + x(t-1)| = 8 mm on the mouth, 0 elsewhere; the ground truth is still.
    assert error.jitter_recon_mm == pytest.approx(8.0 * near.mean(), rel=0.01)
    assert error.jitter_gt_mm == pytest.approx(0.0, abs=1e-6)
    report = error.to_dict()
    assert report["mouth_recon_to_gt_mm"]["n"] == int(near.sum()) * frames
