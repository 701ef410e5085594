"""The batched solver core: B streams together equal B separate streams, and a steady frame reads
nothing back inside the solve."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from mmface4d_stream.fit import lm_solver
from mmface4d_stream.fit.fitter import FaceFitter, FitterConfig
from mmface4d_stream.fit.host_reads import AtenOpCounter, HostReadCounter
from mmface4d_stream.fit.lm_solver import tensor_fields
from mmface4d_stream.fit.multi import MultiStreamFitter
from mmface4d_stream.fit.synthetic import frontal_pose, make_rig, synthetic_face_model, synthetic_frame

DISTORTION = (0.5, -2.5, 1.5, 0.4, -2.3, 1.4, 1e-4, -2e-4)


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def model():
    return synthetic_face_model(n_vertices=2500, n_id=12, n_exp=8, seed=1)


def _stream(model, n_cameras: int, n_frames: int, phase: float, seed: int):
    """A moving, talking synthetic head: [(observation, ground truth)], different per phase/seed."""
    rig = make_rig(n_cameras, distortion=DISTORTION)
    rng = np.random.default_rng(seed)
    alpha = (rng.normal(size=model.n_id) * 0.7).astype(np.float32)
    out = []
    for k in range(n_frames):
        beta = (np.sin(0.4 * k + phase + np.arange(model.n_exp)) * 0.7).astype(np.float32)
        r, t = frontal_pose(8 * np.sin(0.2 * k + phase), -4 + 2 * np.cos(0.15 * k), 2, (0.01, -0.01, 0.66 + 0.002 * k))
        out.append(synthetic_frame(model, rig, r, t, alpha, beta, frame_index=k,
                                   landmark_noise_px=0.5, rng=np.random.default_rng(seed * 100 + k)))
    return out


@pytest.fixture(scope="module")
def streams(model):
    # Different camera counts in one batch: the padded cameras must not change anything.
    return [_stream(model, 3, 8, 0.0, 1), _stream(model, 1, 8, 1.3, 2), _stream(model, 2, 8, 2.1, 3)]


def test_batched_streams_equal_separate_streams(model, streams):
    cfg = FitterConfig(identity_frames=3)
    together = MultiStreamFitter(model, cfg)
    slots = [together.open_stream() for _ in streams]
    separate = [FaceFitter(model, cfg) for _ in streams]
    worst = 0.0
    for k in range(len(streams[0])):
        batch = together.process({s: streams[j][k][0] for j, s in enumerate(slots)})
        for j, s in enumerate(slots):
            alone = separate[j].process(streams[j][k][0])
            assert batch[s].flags == alone.flags
            assert batch[s].iterations == alone.iterations
            worst = max(worst, float(np.abs(batch[s].vertices - alone.vertices).max()))
            err = 1e3 * np.linalg.norm(batch[s].vertices - streams[j][k][1], axis=1).mean()
            assert err < 2.0, f"stream {j} frame {k}: {err:.2f} mm from the truth"
    assert worst * 1e3 <= 0.01, f"batched and separate meshes differ by {worst * 1e3:.4f} mm"


def test_slots_have_independent_state(model, streams):
    fitter = MultiStreamFitter(model, FitterConfig(identity_frames=2))
    a, b = fitter.open_stream(), fitter.open_stream()
    fitter.process({a: streams[0][0][0], b: streams[1][0][0]})
    res = fitter.process({a: streams[0][1][0]})  # only a advances
    assert set(res) == {a}
    assert fitter.stream_state(a)["fitted_frames"] == 2 and fitter.stream_state(b)["fitted_frames"] == 1
    # b continues warm from its own last frame, not a's.
    res_b = fitter.process({b: streams[1][1][0]})[b]
    assert "cold_start" not in res_b.flags
    assert 1e3 * np.linalg.norm(res_b.vertices - streams[1][1][1], axis=1).mean() < 2.0
    fitter.close_stream(a)
    with pytest.raises(KeyError, match="no open fitter slot"):
        fitter.process({a: streams[0][2][0]})


def test_a_steady_frame_reads_nothing_back_inside_the_solve(model, streams, monkeypatch):
    fitter = FaceFitter(model, FitterConfig(identity_frames=2))
    for obs, _ in streams[0][:4]:
        fitter.process(obs)
    inside = []
    solve = lm_solver.solve_frames

    def counted(pack, config, fb, settings):
        # The solve as a captured CUDA graph runs it: no early exit (on a CPU the fitter stops the
        # LM loop once every stream converged, reading one flag per check; pinned below).
        for early_exit in (False, True):
            with HostReadCounter() as reads, AtenOpCounter() as ops:
                out = solve(pack, config, fb, replace(settings, early_exit=early_exit))
            inside.append((reads.total, dict(reads.counts), ops.total, out))
        return out

    monkeypatch.setattr(lm_solver, "solve_frames", counted)
    monkeypatch.setattr("mmface4d_stream.fit.multi.solve_frames", counted)
    with HostReadCounter() as whole:
        res = fitter.process(streams[0][4][0])
    assert "cold_start" not in res.flags and "identity_frozen" in res.flags
    assert len(inside) == 2
    reads, counts, ops, fixed = inside[0]
    assert reads == 0, f"host reads inside the solve: {counts}"
    assert ops > 500  # the counter did see the solve's work
    # Early exit: only the convergence flag is read, at most twice per iteration, and the result
    # is the fixed budget's to the bit (a converged stream's iterations are masked no-ops).
    early_reads, early_counts, early_ops, early = inside[1]
    assert set(early_counts) <= {"__bool__"} and early_reads <= 2 * fitter.config.warm_iterations
    assert early_ops <= ops
    for name, value in tensor_fields(fixed).items():
        assert torch.equal(value, tensor_fields(early)[name]), name
    # Outside the solve: host arrays only (the results' read-back, crops), no value reads (the
    # whole call's flag reads are those of the early-exit solve above).
    outside = dict(whole.counts)
    assert outside.pop("__bool__", 0) == early_counts.get("__bool__", 0)
    assert set(outside) == {"numpy"}, dict(whole.counts)


def test_counters_see_reads():
    t = torch.ones(3)
    with HostReadCounter() as reads:
        bool(t.sum() > 0)
        t.tolist()
        float(t[0])
    assert reads.counts == {"__bool__": 1, "tolist": 1, "__float__": 1}
    with AtenOpCounter() as ops:
        (t * 2 + 1).sum()
    assert ops.total == 3


def test_a_hurried_frame_takes_fewer_iterations_and_keeps_its_offsets(model, streams):
    """`FrameObservation.hurry`: a warm-started frame gets at most `fast_iterations` LM iterations
    and no offset step (the warm start's offsets carried over); a cold start is never hurried."""
    cfg = FitterConfig(identity_frames=3, warm_iterations=6, fast_iterations=1, step_tolerance=0.0, cost_tolerance=0.0)
    frames = [obs for obs, _ in streams[0]]
    fitter = FaceFitter(model, cfg)
    cold = fitter.process(replace(frames[0], hurry=True))
    assert "cold_start" in cold.flags and "hurried" not in cold.flags
    warm = fitter.process(frames[1])
    hurried = fitter.process(replace(frames[2], hurry=True))
    assert "hurried" in hurried.flags and "hurried" not in warm.flags
    assert hurried.iterations <= 1 < warm.iterations
    np.testing.assert_array_equal(hurried.offsets, warm.offsets)
    # the same frame fitted normally moves the offsets, and the pose is still fitted when hurried
    normal = FaceFitter(model, cfg)
    for obs in frames[:2]:
        normal.process(obs)
    full = normal.process(frames[2])
    assert np.abs(full.offsets - warm.offsets).max() > 0
    err_hurried = np.linalg.norm(hurried.vertices - streams[0][2][1], axis=1).mean()
    err_start = np.linalg.norm(warm.vertices - streams[0][2][1], axis=1).mean()
    assert err_hurried < err_start
