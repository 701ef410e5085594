"""Helpers shared by the raster-term tests (imported by name, like tests/preview/preview_helpers.py):
a tracked synthetic sequence, the fitter's error on it per raster mode, the host reads of a solve."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from mmface4d_stream.fit import lm_solver
from mmface4d_stream.fit.fitter import FitterConfig
from mmface4d_stream.fit.geometry import skew_torch
from mmface4d_stream.fit.host_reads import HostReadCounter
from mmface4d_stream.fit.multi import MultiStreamFitter
from mmface4d_stream.fit.synthetic import frontal_pose, make_rig, synthetic_frame

# A strong Kinect-like lens distortion (k1..k6, p1, p2): the raster paths must follow the lens model.
DISTORTION = (0.5, -2.5, 1.5, 0.4, -2.3, 1.4, 1e-4, -2e-4)


def tracking_frames(model, n_cameras: int, n_frames: int, seed: int = 0, with_color: bool = False) -> list:
    """(observation, ground-truth vertices) per frame: a head turning and speaking in front of the rig."""
    rig = make_rig(n_cameras, distortion=DISTORTION)
    out = []
    for k in range(n_frames):
        beta = (np.sin(0.4 * k + np.arange(model.n_exp)) * 0.7).astype(np.float32)
        r, t = frontal_pose(6 * np.sin(0.2 * k), -3, 1, (0.01, -0.01, 0.67 + 0.002 * k))
        out.append(synthetic_frame(model, rig, r, t, None, beta, frame_index=k, landmark_noise_px=2.0,
                                   rng=np.random.default_rng(seed * 100 + k), with_color=with_color))
    return out


def tracking_errors(model, frames: list, modes, device: str = "cpu") -> tuple[dict, MultiStreamFitter, int]:
    """Mean vertex error (metres) of a fresh fitter per raster mode over `frames`, the first (cold)
    frame left out; also the last mode's fitter and its stream slot (to go on with)."""
    errors = {}
    for mode in modes:
        fitter = MultiStreamFitter(model, FitterConfig(raster=mode, identity_frames=2), device=device)
        slot = fitter.open_stream()
        err = [np.linalg.norm(fitter.process({slot: obs})[slot].vertices - gt, axis=1).mean() for obs, gt in frames]
        errors[mode] = float(np.mean(err[1:]))
    return errors, fitter, slot


def reads_inside_the_next_solve(fitter: MultiStreamFitter, slot: int, observation, monkeypatch, check=None):
    """(the fit result, the host reads counted inside its solve: one dict per solve) for the next
    frame; `check(frame_batch)` may look at the solve's inputs first. The solve runs as a captured
    CUDA graph would: without the CPU's early exit (see test_batch_solver)."""
    inside = []
    solve = lm_solver.solve_frames

    def counted(pack, config, fb, settings):
        if check is not None:
            check(fb)
        with HostReadCounter() as reads:
            out = solve(pack, config, fb, replace(settings, early_exit=False))
        inside.append(dict(reads.counts))
        return out

    monkeypatch.setattr("mmface4d_stream.fit.multi.solve_frames", counted)
    return fitter.process({slot: observation})[slot], inside


def nudged_state(state: tuple, index: int, eps: float) -> tuple:
    """The LM state (R (1, 3, 3), t (1, 3), α (1, K_id), β (1, K_exp)) moved by `eps` along parameter
    `index` of the solver's vector [rotation (3, applied on the left), translation (3), α, β]: one
    column of a finite-difference Jacobian."""
    rotation, translation, alpha, beta = state
    n_id = alpha.shape[-1]
    d = torch.zeros((1, 6 + n_id + beta.shape[-1]), dtype=translation.dtype)
    d[0, index] = eps
    return (torch.linalg.matrix_exp(skew_torch(d[:, :3])) @ rotation, translation + d[:, 3:6],
            alpha + d[:, 6:6 + n_id], beta + d[:, 6 + n_id:])
