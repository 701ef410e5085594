"""Many independent face streams fitted together: one GPU (or CPU) serving several sequences.

One module (over 500 lines): `MultiStreamFitter` is one state machine over its slots (warm, cold,
restart, identity phases) and the batching of those slots into solves; the solver itself is
`lm_solver`.

Each stream lives in a slot (`open_stream()`): its own warm start, identity estimate, template
model (when fitting the built-in template), lost-face counters and checkpoint state. A call to
`process({slot: observation, ...})` fits the next frame of every given stream; the streams that
share a model and a phase (warm or cold start, identity fitted or frozen) are solved together by
one `lm_solver.solve_frames` call over a batch B, captured as a CUDA graph on CUDA.

Per frame and stream (the streaming policy of the single-stream fitter):
- no camera sees a face: the previous result flagged `lost` (NaN vertices if there was none yet);
- the template model (model None) is built from the first frame with a face and depth;
- warm start from the stream's previous result while it is recent (`max_lost_frames_warm`), else a
  cold start (landmarks lifted by depth + Kabsch, `cold_iterations` with a widened gate);
- a warm fit whose landmark error exceeds `restart_landmark_rms_px` is redone cold, and the better
  one kept (flag "restarted");
- α is fitted during the stream's first `identity_frames` fitted frames, then frozen.

Warm starts stay on the device between frames (the solve's outputs are the next frame's inputs);
the host reads each frame's finished mesh, offsets and residual figures once, after the solve.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Mapping

import numpy as np
import torch

from mmface4d_stream.face.models import FaceModel
from mmface4d_stream.face.template_model import TemplateModel
from mmface4d_stream.fit.cuda_graph import GraphCache
from mmface4d_stream.fit.fitter_config import FitterConfig
from mmface4d_stream.fit.frame_prep import (
    PreparedCamera,
    choose_crops,
    cold_pose,
    collate_cameras,
    collate_crops,
    patch_radius,
    prepare_cameras,
)
from mmface4d_stream.fit.lm_solver import FrameBatch, SolveOutput, SolveSettings, solve_frames
from mmface4d_stream.fit.model_pack import ModelPack
from mmface4d_stream.fit.template_lift import lift_landmarks
from mmface4d_stream.fit.fit_io import FitResult, FrameObservation, Pose

logger = logging.getLogger(__name__)

__all__ = ["MultiStreamFitter"]

_STATE_FIELDS = ("rotation", "translation", "alpha", "beta", "offsets", "v_id", "full")


@dataclass
class _Stream:
    """One slot's stream state (host side; `device` holds its warm start on the device)."""

    model: FaceModel | None
    built_model: bool = False
    template_pose: tuple[np.ndarray, np.ndarray] | None = None
    last: FitResult | None = None
    identity: np.ndarray | None = None
    lost_run: int = 0
    fitted_frames: int = 0
    no_depth_run: bool = False
    device: dict | None = None  # {field: tensor} of `device_for` below
    device_for: FitResult | None = None
    albedo: object = None  # fit.color_term.AlbedoState (raster "depth+color")


@dataclass
class _Job:
    """One frame of one stream to solve."""

    stream: _Stream
    obs: FrameObservation
    cams: list[PreparedCamera]
    warm: FitResult | None
    fit_identity: bool
    flags: list[str]
    crops: list = field(default_factory=list)
    alpha0: np.ndarray | None = None
    pose0: tuple[np.ndarray, np.ndarray] | None = None
    start_ref: np.ndarray | None = None  # (N, 3) the starting mesh, reference frame (raster term)

    @property
    def hurried(self) -> bool:
        """Fitted the fast way (`FrameObservation.hurry`; a cold start never is)."""
        return self.obs.hurry and self.warm is not None


class MultiStreamFitter:
    """Fit several streams (slots) with one config on one device.

    Args:
        model: the face model shared by every slot; None: each slot builds its own template from its
            first frame with a face and depth (a template is per subject).
        config: `FitterConfig`.  device: torch device.
        cuda_graphs: on CUDA, capture each solve shape once and replay it (False: eager launches).
    """

    def __init__(self, model: FaceModel | None = None, config: FitterConfig | None = None, device="cpu",
                 cuda_graphs: bool = True):
        self.config = config or FitterConfig()
        self.device = torch.device(device)
        self.cuda_graphs = bool(cuda_graphs) and self.device.type == "cuda"
        self._model = model
        self._streams: dict[int, _Stream] = {}
        self._next = 0
        self._packs: dict[int, ModelPack] = {}
        self.graphs = GraphCache()
        self._grids: dict = {}  # FitCamera -> its undistortion grid on the device
        self._rasterizers: dict = {}  # id(ModelPack) -> (ModelPack, fit.raster.Rasterizer) (raster term)
        # Wall-clock split of the last `process` call, ms: host preparation of the frames
        # (prepare_ms, collate_ms), launching the solve (launch_ms), the solve on the device
        # (device_ms: CUDA events; on the CPU the solve itself), read-back and results (finish_ms).
        self.timings: dict[str, float] = {}

    # -- slots -----------------------------------------------------------------------------

    @property
    def slots(self) -> list[int]:
        """The open slots, in opening order."""
        return list(self._streams)

    def open_stream(self) -> int:
        """A new slot with a fresh stream state; returns its id."""
        slot = self._next
        self._next += 1
        self._streams[slot] = _Stream(self._model)
        return slot

    def close_stream(self, slot: int) -> None:
        """Forget a slot (its id is not reused) and the template it built."""
        self._stream(slot)
        del self._streams[slot]
        self._drop_unused_packs()

    def reset_stream(self, slot: int, keep_model: bool = False) -> None:
        """Restart a slot's stream (warm start, identity, counters). A template built by the slot is
        dropped (the next sequence may be another subject) unless `keep_model`."""
        old = self._stream(slot)
        self._streams[slot] = _Stream(old.model if keep_model else self._model,
                                      built_model=keep_model and old.built_model)
        self._drop_unused_packs()

    def model(self, slot: int) -> FaceModel | None:
        """The model slot `slot` fits (None while its template is not built yet)."""
        return self._stream(slot).model

    def stream_state(self, slot: int, include_model: bool | None = None) -> dict:
        """The slot's stream state after its last frame, picklable, for checkpoints.

        Holds the warm start (last result), identity estimate, counters, the learned albedo of
        `raster: depth+color` (on the CPU, without its previous frame), and the model when
        `include_model` (default: only when the slot built it, i.e. the template; a user's BFM is not
        copied). `restore_stream_state` continues the stream as if uninterrupted.
        """
        st = self._stream(slot)
        if include_model is None:
            include_model = st.built_model
        return {
            "model": st.model if include_model else None,
            "built_model": st.built_model,
            "template_pose": st.template_pose,
            "last": st.last,
            "identity": st.identity,
            "lost_run": st.lost_run,
            "fitted_frames": st.fitted_frames,
            "albedo": None if st.albedo is None else st.albedo.copy("cpu", with_previous=False),
        }

    def restore_stream_state(self, slot: int, state: dict) -> None:
        """Continue slot `slot` from a `stream_state` (of this or another fitter with the same config)."""
        st = self._stream(slot)
        if state.get("model") is not None:
            st.model = state["model"]
            st.built_model = bool(state.get("built_model", True))
        elif state.get("built_model") and not st.built_model:
            # (a stream's later checkpoints leave its template out: the keeper carries it over)
            raise ValueError("this stream state lacks the template model it was fitted with; "
                             "restore from one that carries it (`Checkpoint.carry_model`)")
        st.template_pose = state["template_pose"]
        st.last = state["last"]
        st.identity = state["identity"]
        st.lost_run = state["lost_run"]
        st.fitted_frames = state["fitted_frames"]
        st.albedo = None if state["albedo"] is None else state["albedo"].copy(self.device)
        st.device = st.device_for = None

    # -- fitting ---------------------------------------------------------------------------

    def process(self, frames: Mapping[int, FrameObservation], errors: str = "raise") -> dict[int, FitResult]:
        """Fit the next frame of each given slot, warm-started from its previous one: {slot: FitResult}.

        errors: "raise" (a bad observation raises, as for one stream) or "return": a slot whose
            observation is bad gets its exception in the result dict and its stream does not advance;
            the other slots are fitted. A failure of the solve itself raises either way.
        """
        if errors not in ("raise", "return"):
            raise ValueError(f"errors must be 'raise' or 'return', got {errors!r}")
        t0 = time.perf_counter()
        results: dict[int, FitResult | Exception] = {}
        jobs: list[tuple[int, _Job, tuple[str, ...]]] = []
        for slot, obs in frames.items():
            st = self._stream(slot)
            try:
                item = self._start(st, obs)
            except (ValueError, TypeError) as exc:
                if errors == "raise":
                    raise
                results[slot] = exc
                continue
            if isinstance(item, FitResult):
                results[slot] = item
            else:
                jobs.append((slot, *item))
        self.timings = {"prepare_ms": (time.perf_counter() - t0) * 1e3}
        solved = self._solve([job for _, job, _ in jobs])
        cfg = self.config
        redo = [i for i, (_, job, _) in enumerate(jobs)
                if job.warm is not None and solved[i][0].residuals.get("landmark_rms_px", 0.0) > cfg.restart_landmark_rms_px]
        if redo:
            cold = self._solve([self._job(jobs[i][1].stream, jobs[i][1].obs, None, None) for i in redo])
            for i, (res, dev) in zip(redo, cold):
                if res.residuals.get("landmark_rms_px", np.inf) < solved[i][0].residuals["landmark_rms_px"]:
                    solved[i] = (replace(res, flags=res.flags + ("restarted",)), dev)
        cfg = self.config
        for (slot, job, extra), (result, dev) in zip(jobs, solved):
            st = job.stream
            if extra:
                result = replace(result, flags=result.flags + extra)
            if job.fit_identity:
                st.identity = result.id_coeffs.copy()
            st.last, st.device, st.device_for = result, dev, result
            st.lost_run = 0
            st.fitted_frames += 1
            results[slot] = result
        return {slot: results[slot] for slot in frames}

    def _start(self, st: _Stream, obs: FrameObservation):
        """The frame's lost-face result, or (job, extra flags) to solve (template built on the way)."""
        cfg = self.config
        if not obs.cameras:
            raise ValueError("a frame observation needs at least one camera")
        if not obs.has_face():
            return self._lost(st, obs, "lost")
        extra: tuple[str, ...] = ()
        if st.model is None:
            try:
                self._build_template(st, obs)
                extra = ("template_built",)
            except ValueError as exc:
                logger.info("frame %s: template not built yet (%s)", obs.frame_index, exc)
                return self._lost(st, obs, "template_pending")
        last = st.last
        warm = last if (last is not None and np.isfinite(last.vertices).all()
                        and st.lost_run <= cfg.max_lost_frames_warm) else None
        if warm is None and st.template_pose is not None:
            job = self._job(st, obs, None, None, initial_pose=st.template_pose)
            st.template_pose = None
        else:
            job = self._job(st, obs, warm, None)
        return job, extra

    def fit_frame(self, slot: int, obs: FrameObservation, warm_start: FitResult | None = None,
                  fit_identity: bool | None = None) -> FitResult:
        """Fit one frame of slot `slot` from an explicit warm start (None: cold), without advancing
        the stream (its counters and last result stay); see `FaceFitter.fit`."""
        st = self._stream(slot)
        if st.model is None:
            raise ValueError("the fitter has no model yet: pass one, or let process() build the template")
        if not obs.cameras:
            raise ValueError("a frame observation needs at least one camera")
        if not obs.has_face():
            return self._lost(st, obs, "lost", count=False)
        self.timings = {}
        job = self._job(st, obs, warm_start, fit_identity)
        albedo = None if st.albedo is None else st.albedo.copy()
        result, dev = self._solve([job])[0]
        st.albedo = albedo  # (the colour term's update from this frame is not the stream's)
        if job.fit_identity:
            st.identity = result.id_coeffs.copy()
        st.device, st.device_for = dev, result
        return result

    # -- internals -------------------------------------------------------------------------

    def _stream(self, slot: int) -> _Stream:
        try:
            return self._streams[slot]
        except KeyError:
            raise KeyError(f"no open fitter slot {slot}") from None

    def pack(self, model: FaceModel) -> ModelPack:
        """The solver tensors of `model` on this fitter's device (built once per model)."""
        pack = self._packs.get(id(model))
        if pack is None or pack.model is not model:
            pack = ModelPack.build(model, self.config, self.device)
            self._packs[id(model)] = pack
        return pack

    def _drop_unused_packs(self) -> None:
        used = {id(st.model) for st in self._streams.values() if st.model is not None}
        if self._model is not None:
            used.add(id(self._model))
        for key in [k for k in self._packs if k not in used]:
            del self._packs[key]
            self._rasterizers.pop(key, None)
            self.graphs.drop(lambda graph_key, k=key: graph_key[0] == k)

    def _build_template(self, st: _Stream, obs: FrameObservation) -> None:
        from mmface4d_stream.face.topology import N_FACEMESH_POINTS

        points, valid, _ = lift_landmarks(obs, N_FACEMESH_POINTS)
        model, r, t = TemplateModel.from_points(points, valid, subdivisions=self.config.template_subdivisions)
        st.model, st.built_model, st.template_pose = model, True, (r, t)

    def _job(self, st: _Stream, obs: FrameObservation, warm: FitResult | None, fit_identity: bool | None,
             initial_pose=None) -> _Job:
        cfg = self.config
        model = st.model
        pack = self.pack(model)
        cams = prepare_cameras(obs, model, pack.lm_weight)
        if fit_identity is None:
            fit_identity = st.fitted_frames < cfg.identity_frames
        fit_identity = bool(fit_identity) and model.n_id > 0
        if warm is not None and (warm.model_name != model.name or warm.offsets.shape != (model.n_vertices, 3)):
            raise ValueError(
                f"warm start is for model {warm.model_name!r} with {len(warm.offsets)} vertices, "
                f"not {model.name!r} with {model.n_vertices}"
            )
        if warm is not None and not np.isfinite(warm.vertices).all():
            warm = None
        flags: list[str] = []
        # The crop box needs the face's extent, not every depth sample: every 4th one (~200 points,
        # ~2 cm apart on the face) with the landmarks and the 10 % margin covers it.
        samples = pack.samples_host[::4]
        job = _Job(st, obs, cams, warm, fit_identity, flags)
        if warm is not None:
            samples_ref = np.asarray(warm.vertices, np.float64)[samples]
            job.start_ref = warm.vertices
        else:
            flags.append("cold_start")
            alpha = st.identity if st.identity is not None else np.zeros(model.n_id, np.float32)
            rest = model.vertices(alpha).astype(np.float64)  # cold starts are rare: the whole mesh
            r0, t0 = initial_pose if initial_pose is not None else cold_pose(obs, cams, model, rest)
            samples_ref = rest[samples] @ np.asarray(r0).T + np.asarray(t0)
            if cfg.raster != "off":
                job.start_ref = rest @ np.asarray(r0).T + np.asarray(t0)
            job.alpha0, job.pose0 = np.asarray(alpha, np.float32), (np.asarray(r0), np.asarray(t0))
        if not fit_identity and model.n_id:
            flags.append("identity_frozen")
        if job.hurried:
            flags.append("hurried")
        job.crops = choose_crops(cams, samples_ref, cfg.depth_stride, cfg.crop_margin)
        return job

    def _initial_state(self, pack: ModelPack, job: _Job) -> dict[str, torch.Tensor]:
        """The frame's starting state on the device (without the batch dimension)."""
        st = job.stream
        if job.warm is not None and st.device is not None and st.device_for is job.warm:
            return st.device
        f32 = dict(dtype=torch.float32, device=self.device)
        if job.warm is not None:
            w = job.warm
            rotation, translation = torch.as_tensor(w.pose.rotation, **f32), torch.as_tensor(w.pose.translation, **f32)
            alpha, beta = torch.as_tensor(w.id_coeffs, **f32), torch.as_tensor(w.exp_coeffs, **f32)
            offsets = torch.as_tensor(w.offsets, **f32)
        else:
            rotation, translation = torch.as_tensor(job.pose0[0], **f32), torch.as_tensor(job.pose0[1], **f32)
            alpha = torch.as_tensor(job.alpha0, **f32)
            beta = torch.zeros(pack.n_exp, **f32)
            offsets = torch.zeros((pack.n_vertices, 3), **f32)
        v_id = pack.identity_shape(alpha[None])[0]
        full = pack.shape(v_id[None], beta[None], offsets[None])[0]
        return dict(rotation=rotation, translation=translation, alpha=alpha, beta=beta, offsets=offsets,
                    v_id=v_id, full=full)

    def _solve(self, jobs: list[_Job]) -> list[tuple[FitResult, dict]]:
        """Solve jobs grouped by (model, phase); results in the jobs' order."""
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            key = (id(job.stream.model), job.fit_identity, job.warm is None, job.hurried)
            groups.setdefault(key, []).append(i)
        out: list = [None] * len(jobs)
        for indices in groups.values():
            for i, res in zip(indices, self._solve_group([jobs[i] for i in indices])):
                out[i] = res
        return out

    def _solve_group(self, jobs: list[_Job]) -> list[tuple[FitResult, dict]]:
        cfg = self.config
        pack = self.pack(jobs[0].stream.model)
        cold = jobs[0].warm is None
        hurried = jobs[0].hurried
        settings = SolveSettings(
            iterations=(cfg.cold_iterations if cold else
                        min(cfg.warm_iterations, cfg.fast_iterations) if hurried else cfg.warm_iterations),
            widened_iterations=3 if cold else 0,
            fit_identity=jobs[0].fit_identity,
            stride=max(int(cfg.depth_stride), 1),
            radius=patch_radius(cfg.depth_stride),
            chunk=_cpu_chunk(pack.model.n_vertices) if self.device.type == "cpu" else None,
            early_exit=self.device.type == "cpu",
            offsets=not hurried,
        )
        n_cam = max(len(job.cams) for job in jobs)
        n_jobs = len(jobs)
        if self.cuda_graphs:
            # Batch sizes padded to powers of two (the last stream repeated, its copies discarded):
            # a shared fitter sees every size from 1 to its maximum, but captures few graphs.
            jobs = jobs + [jobs[-1]] * ((1 << (n_jobs - 1).bit_length()) - n_jobs)
        t0 = time.perf_counter()
        # (inference mode, not just no_grad: no version counters or view tracking, ~10 % less CPU
        # per op on the small tensors of a 1-camera template fit)
        with torch.inference_mode():
            cameras, lm_target, lm_conf = collate_cameras([job.cams for job in jobs], n_cam, self.device)
            depth, ray_grid, origin, size = collate_crops([job.cams for job in jobs], [job.crops for job in jobs],
                                                          n_cam, self.device, self._grids,
                                                          size_step=16 if self.cuda_graphs else 1)
            states = [self._initial_state(pack, job) for job in jobs]
            init = {k: _stack([s[k] for s in states]) for k in _STATE_FIELDS}
            temporal = torch.tensor([0.0 if cold else 1.0] * len(jobs), dtype=torch.float32, device=self.device)
            raster = self._raster_batch(pack, jobs, n_cam, depth.shape[3]) if cfg.raster != "off" else None
            color = (self._color_batch(pack, jobs, raster, cameras, depth, origin, size, init)
                     if cfg.raster == "depth+color" else None)
            fb = FrameBatch(cameras, lm_target, lm_conf, depth, ray_grid, origin, size, init["rotation"],
                            init["translation"], init["alpha"], init["beta"], init["offsets"], init["v_id"],
                            init["full"], temporal, raster, color)
            fn = partial(_solve_fn, pack, cfg, settings)
            t1 = time.perf_counter()
            cuda = self.device.type == "cuda"
            if cuda:
                events = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                events[0].record()
            if self.cuda_graphs:
                key = (id(pack), len(jobs), n_cam, tuple(depth.shape[2:]), settings)
                out = self.graphs.run(key, fn, fb)
                # The graph's outputs are overwritten by its next replay: keep copies.
                kept = {k: getattr(out, k).clone() for k in _STATE_FIELDS}
            else:
                out = fn(fb)
                kept = {k: getattr(out, k) for k in _STATE_FIELDS}
            if cuda:
                events[1].record()
            t2 = time.perf_counter()
            host = _read_back(out)
        results = []
        for i, job in enumerate(jobs[:n_jobs]):
            results.append((self._result(pack, job, host, i), {k: v[i] for k, v in kept.items()}))
        t3 = time.perf_counter()
        timing = self.timings
        timing["collate_ms"] = timing.get("collate_ms", 0.0) + (t1 - t0) * 1e3
        timing["launch_ms"] = timing.get("launch_ms", 0.0) + (t2 - t1) * 1e3
        timing["device_ms"] = timing.get("device_ms", 0.0) + (events[0].elapsed_time(events[1]) if cuda else (t2 - t1) * 1e3)
        timing["finish_ms"] = timing.get("finish_ms", 0.0) + (t3 - t2) * 1e3
        return results

    def _raster_batch(self, pack: ModelPack, jobs: list[_Job], n_cam: int, patch_width: int):
        """The rasterized depth term's samples of a batch (`raster_term.prepare_raster`): each job's
        starting mesh rasterized into its depth crops, on the host (GL) or with nvdiffrast."""
        from mmface4d_stream.fit.raster import make_rasterizer
        from mmface4d_stream.fit.raster_term import RasterView, prepare_raster

        cfg = self.config
        entry = self._rasterizers.get(id(pack))
        if entry is None or entry[0] is not pack:
            entry = (pack, make_rasterizer(pack.model.triangles, pack.n_vertices, cfg.raster_backend, self.device))
            self._rasterizers[id(pack)] = entry
        rasterizer = entry[1]
        stride = max(int(cfg.depth_stride), 1)
        views = [[None if crop is None else
                  RasterView(cam.camera, cam.r_cam_from_ref, cam.t_cam_from_ref, crop.depth_mm, crop.x0, crop.y0, stride)
                  for cam, crop in zip(job.cams, job.crops)] for job in jobs]
        return prepare_raster(rasterizer, views, [job.start_ref for job in jobs], n_cam,
                              patch_width, cfg.raster_samples, 3 * cfg.depth_gate_m, self.device)

    def _color_batch(self, pack: ModelPack, jobs: list[_Job], raster, cameras, depth, origin, size, init: dict):
        """The photometric term's inputs of a batch (`color_term.prepare_color`), each stream's albedo
        updated from its previous frame."""
        from mmface4d_stream.fit.color_term import AlbedoState, color_windows, prepare_color

        for job in jobs:
            if job.stream.albedo is None:
                job.stream.albedo = AlbedoState()
        windows = [color_windows(job.obs, job.cams, job.crops, max(int(self.config.depth_stride), 1)) for job in jobs]
        return prepare_color(pack, self.config, raster, windows, cameras, depth, origin, size, init["rotation"],
                             init["translation"], init["full"], [job.warm is not None for job in jobs],
                             [job.stream.albedo for job in jobs], max(int(self.config.depth_stride), 1))

    def _result(self, pack: ModelPack, job: _Job, host: dict[str, np.ndarray], i: int) -> FitResult:
        st = job.stream
        r64 = host["rotation"][i].astype(np.float64)
        r64 = 0.5 * r64 @ (3 * np.eye(3) - r64.T @ r64)  # one float64 polar step: orthonormal to rounding
        residuals: dict[str, float] = {}
        lm_sq, lm_n = 0.0, 0.0
        for k, cam in enumerate(job.cams):
            n = float(host["lm_count"][i, k])
            if n > 0:
                sq = float(host["lm_sq"][i, k])
                residuals[f"landmark_rms_px/cam{cam.index}"] = math.sqrt(sq / n)
                lm_sq, lm_n = lm_sq + sq, lm_n + n
        if lm_n:
            residuals["landmark_rms_px"] = math.sqrt(lm_sq / lm_n)
        flags = list(job.flags)
        depth_cams = host["camera_depth"][i]
        flags += [f"no_depth:cam{cam.index}" for k, cam in enumerate(job.cams) if depth_cams[k] <= 0]
        depth_used = bool((depth_cams[: len(job.cams)] > 0).any())
        if depth_used:
            cnt = float(host["depth_count"][i])
            residuals["depth_rms_mm"] = 1e3 * math.sqrt(float(host["depth_sq"][i]) / cnt) if cnt else float("nan")
            residuals["depth_inliers"] = cnt
        else:
            flags.append("no_depth")
            # Once per run of such frames: every result carries the flag anyway.
            log = logger.debug if st.no_depth_run else logger.warning
            log("frame %s: no usable depth near the face; landmark-only fit", job.obs.frame_index)
        st.no_depth_run = not depth_used
        return FitResult(
            vertices=host["vertices"][i],
            pose=Pose(r64, host["translation"][i].astype(np.float64)),
            id_coeffs=host["alpha"][i].astype(np.float32),
            exp_coeffs=host["beta"][i].astype(np.float32),
            offsets=host["offsets"][i],
            residuals=residuals,
            iterations=int(host["iterations"][i]),
            converged=bool(host["converged"][i] > 0),
            lost=False,
            depth_used=depth_used,
            flags=tuple(flags),
            frame_index=job.obs.frame_index,
            model_name=pack.model.name,
        )

    def _lost(self, st: _Stream, obs: FrameObservation, reason: str, count: bool = True) -> FitResult:
        if count:
            st.lost_run += 1
        logger.info("frame %s: %s", obs.frame_index, reason)
        if st.last is not None:
            return replace(st.last, lost=True, iterations=0, converged=False, flags=(reason,),
                           frame_index=obs.frame_index, residuals={})
        model = st.model
        n = model.n_vertices if model is not None else 0
        return FitResult(
            vertices=np.full((n, 3), np.nan, np.float32),
            pose=Pose(np.eye(3), np.zeros(3)),
            id_coeffs=np.zeros(model.n_id if model is not None else 0, np.float32),
            exp_coeffs=np.zeros(model.n_exp if model is not None else 0, np.float32),
            offsets=np.zeros((n, 3), np.float32),
            residuals={},
            iterations=0,
            converged=False,
            lost=True,
            depth_used=False,
            flags=(reason,),
            frame_index=obs.frame_index,
            model_name=model.name if model is not None else "",
        )


CPU_CHUNK_BYTES = 2 << 20  # ~ one core's L2 cache on the machines this was tuned on


def _cpu_chunk(n_vertices: int) -> int:
    """Streams per pass of the per-vertex work on a CPU: as many as keep one pass's (3, 3, N)
    float32 offset blocks within CPU_CHUNK_BYTES (8 template-size streams, 1 BFM-size stream). Larger
    passes fall out of cache; smaller ones pay the per-op overhead once per stream."""
    return max(1, CPU_CHUNK_BYTES // (36 * max(int(n_vertices), 1)))


def _solve_fn(pack: ModelPack, config, settings: SolveSettings, fb: FrameBatch) -> SolveOutput:
    return solve_frames(pack, config, fb, settings)


def _stack(rows: list[torch.Tensor]) -> torch.Tensor:
    """Stack per-stream tensors; rows that are already rows 0..B-1 of one batch tensor are used as is."""
    if len(rows) == 1:
        return rows[0].unsqueeze(0)  # a view: one stream's warm start is not copied
    base = rows[0]._base
    if (base is not None and base.shape[0] == len(rows) and all(r._base is base for r in rows)
            and all(r.storage_offset() == base[i].storage_offset() for i, r in enumerate(rows))):
        return base
    return torch.stack(rows)


_READ_FIELDS = ("vertices", "offsets", "rotation", "translation", "alpha", "beta", "iterations", "converged",
                "lm_sq", "lm_count", "depth_sq", "depth_count", "camera_depth")


def _read_back(out: SolveOutput) -> dict[str, np.ndarray]:
    """The host copy of a solve's results: one batch of asynchronous copies, one synchronization."""
    tensors = {k: getattr(out, k) for k in _READ_FIELDS}
    if out.vertices.device.type != "cuda":
        return {k: v.numpy() for k, v in tensors.items()}
    host = {k: torch.empty(v.shape, dtype=v.dtype, pin_memory=True) for k, v in tensors.items()}
    for k, v in tensors.items():
        host[k].copy_(v, non_blocking=True)
    torch.cuda.current_stream(out.vertices.device).synchronize()
    return {k: v.numpy() for k, v in host.items()}
