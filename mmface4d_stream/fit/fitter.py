"""The per-frame face fitter: warm-started Levenberg-Marquardt on pose + coefficients, then offsets.

Unknowns per frame: the rigid pose (R, t) taking the model frame to the reference camera, the
identity coefficients α (fitted during the first `identity_frames` frames of a stream, then
frozen: a subject does not change shape), the expression coefficients β, and per-vertex offsets D.

    X_i = R (mean_i + B_id,i α + B_exp,i β + d_i) + t           reference frame, metres

Cost (every term a weighted sum of squares; robust terms use Huber weights, re-computed each
iteration, i.e. iteratively reweighted least squares):
- landmarks: for every camera c and mapped detector point l, the pinhole reprojection of X_l into c
  minus the observed point undistorted to the pinhole image, / `landmark_sigma_px`, × confidence;
- depth: for a fixed random subset of vertices (`depth_samples`), projective association into each
  camera's registered depth map (see `camera_terms`), point-to-plane distance / `depth_sigma_m`;
- priors: `id_prior_weight` ||α||², `exp_prior_weight` ||β||² (the bases carry the PCA scales);
- temporal: `exp_temporal_weight` ||β - β_prev||², the pose's change from the previous frame,
  `id_temporal_weight` ||α - α_prev|| while identity is still being fitted.

Solver: Gauss-Newton with Levenberg-Marquardt damping (Marquardt 1963) on the small parameter
vector (6 + K_id + K_exp; 70 for the BFM once identity is frozen). The Jacobians are analytic and
structured: per point, d(pixel)/d(point) (2x3) or the plane normal (1x3) times the model-frame
bases gathered once per model, so one iteration costs a few small batched products plus a
P×P solve. Associations and robust weights are refreshed at every iteration (ICP style); a step
is accepted only if it lowers the cost under the current associations.

Offsets: after the pose/coefficient iterations, one linear least-squares step for D over all
vertices (depth point-to-plane on a fixed vertex subset of `offset_data_vertices` and landmark
terms, linearized, with Laplacian, edge, magnitude and temporal regularization spreading them to
every vertex; `regularizers.OffsetRegularizer`, a few preconditioned CG steps warm-started from the
previous frame).

Cost structure: all cameras are processed together (stacked tensors: `camera_terms.PatchSet`,
`_LandmarkBatch`), depth rows are dense over the sample set with zero weights for unassociated
samples (no gathers of the bases), and model normals (visibility gating only) are refreshed every
few frames. Measured on a loaded 2-core CPU, one torch thread: ~60 ms CPU per frame for the BFM
size with 3 cameras, ~35 ms for the template (see benchmarks/fitter.py).

Streaming (`process`): each frame is warm-started from the previous result, so a few iterations
suffice (`warm_iterations`); a frame where no camera sees a face returns the previous result
flagged `lost=True` (never a made-up mesh); frames without usable depth are fitted to the landmarks
alone and flagged. The default model (`model=None`) is the built-in template
(`face.models.TemplateModel`), built from the first frame with a face and depth.

Everything is deterministic for a given input on a given device and thread count (no random
choices at run time; the vertex subsets come from a fixed seed). On CUDA, `index_add_` (normals,
landmark offset blocks) adds floats in a nondeterministic order: results agree to ~1e-7.
Threads: the per-frame work is many small tensor ops; on a shared CPU, `torch.set_num_threads(1)`
per fitter process is usually faster than OpenMP's spin-waiting threads.

Usage (one stream; the graph builds observations from the landmark detector and registered depth):

    fitter = FaceFitter(BfmModel.load(bfm_dir, landmark_mapping=mapping_json))  # or FaceFitter()
    for i, frame in enumerate(frames):
        obs = FrameObservation([
            CameraObservation(intrinsics=calib[c].color,            # k4a CameraModel (lens model)
                              landmarks_px=lm[c].points_px if lm[c].found else None,   # (478, 2)
                              depth_mm=depth[c],                     # (H, W) uint16, in colour camera
                              T_ref_from_cam=rig[c])                 # (4, 4)
            for c in range(n_cameras)], frame_index=i)
        result = fitter.process(obs)   # result.vertices: (N, 3) float32 metres, reference camera
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from mmface4d_stream.face.models import R_CAMERA_FROM_MODEL_FRONTAL, FaceModel, TemplateModel
from mmface4d_stream.fit.camera_terms import DepthPatch, FitCamera, PatchSet, make_depth_patch
from mmface4d_stream.fit.geometry import kabsch, skew_torch, so3_exp_torch, so3_log
from mmface4d_stream.fit.regularizers import OffsetRegularizer
from mmface4d_stream.fit.template_lift import lift_landmarks
from mmface4d_stream.fit.types import CameraObservation, FitResult, FrameObservation, Pose

logger = logging.getLogger(__name__)

__all__ = ["FitterConfig", "FaceFitter", "vertex_normals_torch"]


@dataclass(frozen=True)
class FitterConfig:
    """Fitter settings; weights are relative to one squared, sigma-normalized data residual.

    Iterations:
        cold_iterations: LM iterations for a frame without a warm start.
        warm_iterations: LM iterations for a warm-started frame.
        step_tolerance: converged when no rotation (rad) / translation (m) / coefficient changes more
            than this (translation uses it ×0.1, coefficients ×10).
        cost_tolerance: ... or when an accepted step lowers the cost by less than this fraction, or
            when, after re-association, the cost is not this fraction below the previous
            iteration's (pixel-discrete associations make ICP-style costs cycle near the optimum).
    Landmarks:
        landmark_sigma_px: expected detector noise, pixels (MediaPipe on a ~250 px wide face:
            ~3 px rms).  landmark_huber_px: robust threshold.
    Depth:
        depth_samples: vertices used by the depth term in the LM iterations.
        depth_sigma_m, depth_huber_m: noise and robust threshold, metres.
        depth_gate_m: association rejected beyond this distance (×3 during a cold start's first
            iterations).  depth_min_normal_cos: model/depth normal agreement required.
        crop_margin: depth crop = projected model bbox grown by this fraction on each side.
        depth_stride: keep every n-th depth pixel of the crop (association and normals).
    Priors and temporal terms: see the module docstring.  rotation_temporal_sigma (rad) and
        translation_temporal_sigma (m) give the pose's frame-to-frame prior.
    identity_frames: frames of a stream during which α is fitted (0: never, keep α = 0 or the warm
        start's).
    Offsets (`offsets` False disables the step): the weights are in units of the depth term's
        1/σ², i.e. `offset_magnitude_weight` w makes an offset of length d cost as much as a depth
        residual of sqrt(w)·d; `offset_landmark_weight` scales the landmark term's pull on the
        mapped vertices; `offset_cg_iterations` CG steps per frame (warm-started);
        `offset_data_vertices`: vertices carrying the depth data term (a fixed random subset when
        the model has more; all of them for the template).
    Robustness: `restart_landmark_rms_px`: a warm fit worse than this is redone cold;
        `max_lost_frames_warm`: after that many lost frames the next fit starts cold.
    template_subdivisions: subdivision levels of the built-in template (2: 6,996 vertices).
    normals_refresh_frames: model normals (visibility gating only) are recomputed every this many
        chained warm-started frames.
    """

    cold_iterations: int = 20
    warm_iterations: int = 4
    step_tolerance: float = 1e-4
    cost_tolerance: float = 1e-3
    initial_damping: float = 1e-4

    landmark_sigma_px: float = 3.0
    landmark_huber_px: float = 6.0

    depth_samples: int = 800
    depth_sigma_m: float = 0.002
    depth_huber_m: float = 0.004
    depth_gate_m: float = 0.015
    depth_min_normal_cos: float = 0.3
    crop_margin: float = 0.1
    depth_stride: int = 2

    id_prior_weight: float = 1.0
    exp_prior_weight: float = 1.0
    exp_temporal_weight: float = 1.0
    id_temporal_weight: float = 5.0
    rotation_temporal_sigma: float = 0.2
    translation_temporal_sigma: float = 0.05
    identity_frames: int = 30

    offsets: bool = True
    offset_laplacian_weight: float = 50.0
    offset_edge_weight: float = 1.0
    offset_magnitude_weight: float = 0.02
    offset_temporal_weight: float = 0.2
    offset_landmark_weight: float = 1.0
    offset_cg_iterations: int = 6
    offset_data_vertices: int = 12000

    restart_landmark_rms_px: float = 25.0
    max_lost_frames_warm: int = 10
    template_subdivisions: int = 2
    normals_refresh_frames: int = 3


def vertex_normals_torch(vertices: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals (N, 3) of a mesh (vertices (N, 3), triangles (F, 3) long)."""
    a, b, c = vertices[triangles[:, 0]], vertices[triangles[:, 1]], vertices[triangles[:, 2]]
    fn = torch.linalg.cross(b - a, c - a, dim=1)
    n = torch.zeros_like(vertices)
    for k in range(3):
        n.index_add_(0, triangles[:, k], fn)
    return n / torch.linalg.norm(n, dim=1, keepdim=True).clamp_min(1e-12)


def _huber_weight(abs_r: torch.Tensor, k: float) -> torch.Tensor:
    """IRLS weight ρ'(r) / 2r of the Huber cost: 1 inside k, k/|r| outside."""
    return torch.where(abs_r <= k, torch.ones_like(abs_r), k / abs_r.clamp_min(1e-12))


def _huber_cost(abs_r: torch.Tensor, k: float) -> torch.Tensor:
    """Huber cost ρ(r): r² inside k, 2k|r| - k² outside (continuous, with continuous slope)."""
    return torch.where(abs_r <= k, abs_r * abs_r, 2 * k * abs_r - k * k)


@dataclass
class _Cam:
    """One camera of one frame, prepared for the solver."""

    index: int
    camera: FitCamera
    r_cam_from_ref: torch.Tensor  # (3, 3)
    t_cam_from_ref: torch.Tensor  # (3,)
    lm_rows: torch.Tensor  # (Lc,) rows of the model's landmark table observed in this camera
    lm_target: torch.Tensor  # (Lc, 2) pinhole pixels
    lm_conf: torch.Tensor  # (Lc,)
    depth: np.ndarray | None
    patch: DepthPatch | None = None


@dataclass
class _LandmarkBatch:
    """The cameras that see landmarks, stacked: every camera carries the whole landmark table,
    with confidence 0 where it did not observe a point (one set of ops for K cameras)."""

    cam_index: list[int]
    r: torch.Tensor  # (K, 3, 3) reference -> camera
    t: torch.Tensor  # (K, 3)
    focal: torch.Tensor  # (K, 1, 2) fx, fy
    centre: torch.Tensor  # (K, 1, 2) cx, cy
    target: torch.Tensor  # (K, L, 2) pinhole pixels (0 where unobserved)
    conf: torch.Tensor  # (K, L)

    @classmethod
    def build(cls, cams: list["_Cam"], n_landmarks: int) -> "_LandmarkBatch | None":
        seen = [c for c in cams if len(c.lm_rows)]
        if not seen:
            return None
        dev, dt = seen[0].lm_target.device, seen[0].lm_target.dtype
        target = torch.zeros((len(seen), n_landmarks, 2), dtype=dt, device=dev)
        conf = torch.zeros((len(seen), n_landmarks), dtype=dt, device=dev)
        for k, c in enumerate(seen):
            target[k, c.lm_rows] = c.lm_target
            conf[k, c.lm_rows] = c.lm_conf
        return cls(
            [c.index for c in seen],
            torch.stack([c.r_cam_from_ref for c in seen]),
            torch.stack([c.t_cam_from_ref for c in seen]),
            torch.tensor([[[c.camera.fx, c.camera.fy]] for c in seen], dtype=dt, device=dev),
            torch.tensor([[[c.camera.cx, c.camera.cy]] for c in seen], dtype=dt, device=dev),
            target, conf,
        )

    def project(self, points_ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L, 3) reference-frame points -> pinhole pixels (K, L, 2) and d pixel / d X_cam (K, L, 2, 3)."""
        xc = torch.einsum("kij,lj->kli", self.r, points_ref) + self.t[:, None, :]
        iz = 1.0 / xc[..., 2:3].clamp_min(1e-6)
        xy = xc[..., :2] * iz
        uv = xy * self.focal + self.centre
        fi = self.focal * iz  # (K, L, 2): fx/z, fy/z
        zero = torch.zeros_like(iz[..., 0])
        jp = torch.stack([
            torch.stack([fi[..., 0], zero, -fi[..., 0] * xy[..., 0]], -1),
            torch.stack([zero, fi[..., 1], -fi[..., 1] * xy[..., 1]], -1),
        ], -2)
        return uv, jp


@dataclass
class _State:
    rotation: torch.Tensor  # (3, 3) float32
    translation: torch.Tensor  # (3,)
    alpha: torch.Tensor  # (K_id,)
    beta: torch.Tensor  # (K_exp,)
    offsets: torch.Tensor  # (N, 3)

    def clone(self) -> "_State":
        return _State(self.rotation.clone(), self.translation.clone(), self.alpha.clone(), self.beta.clone(), self.offsets)


class FaceFitter:
    """Fit a `FaceModel` to synchronized RGB-D frames from 1 to K cameras.

    Args:
        model: the face model; None: the built-in template, built from the first frame with a face
            and depth (see `TemplateModel.from_points`).
        config: `FitterConfig`.
        device: torch device ("cpu", "cuda", ...).
    Use `process(obs)` on a stream (keeps the warm start, identity and lost-face state) or
    `fit(obs, warm_start=...)` for a single frame.
    """

    def __init__(self, model: FaceModel | None = None, config: FitterConfig | None = None, device="cpu"):
        self.config = config or FitterConfig()
        self.device = torch.device(device)
        self._model: FaceModel | None = None
        self._built_model = False  # the model is a template built from the stream
        self._template_pose: tuple[np.ndarray, np.ndarray] | None = None
        self.reset()
        if model is not None:
            self._set_model(model)

    # -- public API ------------------------------------------------------------------------

    @property
    def model(self) -> FaceModel | None:
        """The model being fitted (None until the template is built when constructed without one)."""
        return self._model

    def reset(self) -> None:
        """Forget the stream: warm start, identity estimate and counters (the model is kept)."""
        self._last: FitResult | None = None
        self._identity: np.ndarray | None = None  # latest fitted α: cold starts reuse it once frozen
        self._lost_run = 0
        self._fitted_frames = 0
        self._no_depth_run = False

    def stream_state(self, include_model: bool | None = None) -> dict:
        """The stream state after the last frame, picklable, for checkpoints.

        Holds the warm start (last result), identity estimate, counters, and the model when
        `include_model` (default: only when the fitter built it, i.e. the template; a user's BFM is
        not copied). `restore_stream_state` on a fresh fitter with the same config continues the
        stream as if uninterrupted (derived caches are rebuilt on the next frame).
        """
        if include_model is None:
            include_model = self._built_model
        return {
            "model": self._model if include_model else None,
            "built_model": self._built_model,
            "template_pose": self._template_pose,
            "last": self._last,
            "identity": self._identity,
            "lost_run": self._lost_run,
            "fitted_frames": self._fitted_frames,
        }

    def restore_stream_state(self, state: dict) -> None:
        """Continue from a `stream_state()` (see there)."""
        if state.get("model") is not None:
            self._set_model(state["model"])
            self._built_model = bool(state.get("built_model", True))
        self._template_pose = state["template_pose"]
        self._last = state["last"]
        self._identity = state["identity"]
        self._lost_run = state["lost_run"]
        self._fitted_frames = state["fitted_frames"]

    def process(self, obs: FrameObservation) -> FitResult:
        """Fit the next frame of a stream, warm-started from the previous one.

        Returns the previous result flagged `lost=True` when no camera sees a face (NaN vertices if
        there was none yet).
        """
        flags: tuple[str, ...] = ()
        if not obs.cameras:
            raise ValueError("a frame observation needs at least one camera")
        if not obs.has_face():
            return self._lost(obs, "lost")
        if self._model is None:
            try:
                self._build_template(obs)
                flags = ("template_built",)
            except ValueError as exc:
                logger.info("frame %s: template not built yet (%s)", obs.frame_index, exc)
                return self._lost(obs, "template_pending")
        warm = self._last if (self._last is not None and not np.isnan(self._last.vertices).any()
                              and self._lost_run <= self.config.max_lost_frames_warm) else None
        if warm is None and self._template_pose is not None:
            result = self._fit(obs, None, None, initial_pose=self._template_pose)
            self._template_pose = None
        else:
            result = self.fit(obs, warm_start=warm)
            if warm is not None and result.residuals.get("landmark_rms_px", 0.0) > self.config.restart_landmark_rms_px:
                cold = self.fit(obs, warm_start=None)
                if cold.residuals.get("landmark_rms_px", np.inf) < result.residuals["landmark_rms_px"]:
                    result = replace(cold, flags=cold.flags + ("restarted",))
        if flags:
            result = replace(result, flags=result.flags + flags)
        self._last = result
        self._lost_run = 0
        self._fitted_frames += 1
        return result

    def fit(self, obs: FrameObservation, warm_start: FitResult | None = None, fit_identity: bool | None = None) -> FitResult:
        """Fit one frame.

        Args:
            obs: the frame's camera observations.
            warm_start: a previous `FitResult` of the same model to start from (pose, coefficients,
                offsets, and the temporal terms' reference); None: cold start from the landmarks.
            fit_identity: fit α on this frame; None: while the stream has seen fewer than
                `identity_frames` fitted frames.
        Raises:
            ValueError: no model yet (template mode before `process` built it), no cameras, or
                inconsistent camera data.
        """
        if self._model is None:
            raise ValueError("the fitter has no model yet: pass one, or let process() build the template")
        if not obs.cameras:
            raise ValueError("a frame observation needs at least one camera")
        if not obs.has_face():
            return self._lost(obs, "lost", count=False)
        return self._fit(obs, warm_start, fit_identity)

    # -- model setup -----------------------------------------------------------------------

    def _set_model(self, model: FaceModel) -> None:
        cfg = self.config
        self._model = model
        dev = self.device
        self._t = model.to_torch(dev)
        lm_v = self._t.landmark_vertex
        self._lm_mean = self._t.mean_shape[lm_v]
        self._lm_id = self._t.id_basis[lm_v]
        self._lm_exp = self._t.exp_basis[lm_v]
        candidates = np.setdiff1d(np.arange(model.n_vertices), model.depth_excluded)
        rng = np.random.default_rng(0)
        k = min(cfg.depth_samples, len(candidates))
        samples = np.sort(rng.choice(candidates, size=k, replace=False))
        self._samples = torch.as_tensor(samples, dtype=torch.int64, device=dev)
        self._s_mean = self._t.mean_shape[self._samples]
        self._s_id = self._t.id_basis[self._samples]
        self._s_exp = self._t.exp_basis[self._samples]
        # Per-coordinate contiguous copies (S, K) for the depth Jacobian's n·B products.
        self._s_id_c = tuple(self._s_id[:, c, :].contiguous() for c in range(3))
        self._s_exp_c = tuple(self._s_exp[:, c, :].contiguous() for c in range(3))
        k_off = min(cfg.offset_data_vertices, len(candidates))
        offset_data = candidates if k_off == len(candidates) else np.sort(rng.choice(candidates, size=k_off, replace=False))
        self._offset_data_idx = torch.as_tensor(offset_data, dtype=torch.int64, device=dev)
        self._offset_reg = None
        if cfg.offsets:
            w = 1.0 / cfg.depth_sigma_m**2
            self._offset_reg = OffsetRegularizer(
                model.n_vertices, model.triangles, cfg.offset_laplacian_weight * w, cfg.offset_edge_weight * w, dev
            )
        self._id_cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self._last_fit: FitResult | None = None
        self._final_full: torch.Tensor | None = None
        self._normals_age = 0

    def _build_template(self, obs: FrameObservation) -> None:
        from mmface4d_stream.face.topology import N_FACEMESH_POINTS

        points, valid, _ = lift_landmarks(obs, N_FACEMESH_POINTS)
        model, r, t = TemplateModel.from_points(points, valid, subdivisions=self.config.template_subdivisions)
        self._set_model(model)
        self._built_model = True
        self._template_pose = (r, t)

    # -- per-frame preparation -------------------------------------------------------------

    def _prepare(self, obs: FrameObservation) -> list[_Cam]:
        if not obs.cameras:
            raise ValueError("a frame observation needs at least one camera")
        dev = self.device
        det_idx = self._model.landmark_detector_index
        cams = []
        for c, co in enumerate(obs.cameras):
            if not isinstance(co, CameraObservation):
                raise ValueError(f"camera {c}: expected a CameraObservation, got {type(co).__name__}")
            cam = FitCamera.from_any(co.intrinsics)
            t_rc = np.asarray(co.T_ref_from_cam, dtype=np.float64)
            if t_rc.shape != (4, 4):
                raise ValueError(f"camera {c}: T_ref_from_cam must be 4x4, got {t_rc.shape}")
            r_cr = t_rc[:3, :3].T
            t_cr = -r_cr @ t_rc[:3, 3]
            rows = np.zeros(0, np.int64)
            target = np.zeros((0, 2))
            conf = np.zeros(0)
            if co.has_face():
                lm = np.asarray(co.landmarks_px, dtype=np.float64)
                if lm.ndim != 2 or lm.shape[1] != 2:
                    raise ValueError(f"camera {c}: landmarks_px must be (P, 2), got {lm.shape}")
                p = len(lm)
                cf = np.ones(p) if co.landmark_conf is None else np.asarray(co.landmark_conf, np.float64).ravel()
                if len(cf) != p:
                    raise ValueError(f"camera {c}: landmark_conf has {len(cf)} values for {p} landmarks")
                rows = np.flatnonzero(det_idx < p)
                d = det_idx[rows]
                ok = np.isfinite(lm[d]).all(1) & (cf[d] > 0)
                rows = rows[ok]
                target = cam.undistort_to_pinhole_px(lm[det_idx[rows]])
                conf = np.clip(cf[det_idx[rows]], 0, 1)
            depth = None
            if co.depth_mm is not None:
                depth = np.asarray(co.depth_mm)
                if depth.shape != (cam.height, cam.width):
                    raise ValueError(
                        f"camera {c}: depth map is {depth.shape[1]}x{depth.shape[0]} but the camera is {cam.width}x{cam.height}"
                    )
            f32 = dict(dtype=torch.float32, device=dev)
            cams.append(_Cam(
                c, cam, torch.as_tensor(r_cr, **f32), torch.as_tensor(t_cr, **f32),
                torch.as_tensor(rows, dtype=torch.int64, device=dev), torch.as_tensor(target, **f32),
                torch.as_tensor(conf, **f32), depth,
            ))
        return cams

    def _make_patches(self, cams: list[_Cam], st: _State) -> list[str]:
        """Crop each camera's depth around the projected model; returns flags for cameras without depth."""
        flags = []
        pts = self._sub_points(st, self._s_mean, self._s_id, self._s_exp, self._samples)
        x_ref = pts @ st.rotation.T + st.translation
        for cam in cams:
            cam.patch = None
            if cam.depth is None:
                flags.append(f"no_depth:cam{cam.index}")
                continue
            xc = x_ref @ cam.r_cam_from_ref.T + cam.t_cam_from_ref
            front = xc[:, 2] > 0.05
            if int(front.sum()) < 10:
                flags.append(f"no_depth:cam{cam.index}")
                continue
            uv = cam.camera.project_torch(xc[front]).cpu().numpy()
            lo, hi = uv.min(0), uv.max(0)
            if len(cam.lm_rows):
                raw = cam.lm_target.cpu().numpy()  # pinhole pixels are close enough for a crop box
                lo, hi = np.minimum(lo, raw.min(0)), np.maximum(hi, raw.max(0))
            m = self.config.crop_margin * (hi - lo) + 4
            lo, hi = lo - m, hi + m
            if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
                flags.append(f"no_depth:cam{cam.index}")
                continue
            bbox = (int(lo[0]), int(lo[1]), int(hi[0]) + 1, int(hi[1]) + 1)
            patch = make_depth_patch(cam.depth, cam.camera, bbox, self.device, stride=self.config.depth_stride)
            if patch is None or patch.n_valid < 50:
                flags.append(f"no_depth:cam{cam.index}")
                continue
            cam.patch = patch
        return flags

    # -- model evaluation ------------------------------------------------------------------

    def _sub_points(self, st: _State, mean, bid, bexp, idx) -> torch.Tensor:
        v = mean
        if bid.shape[2]:
            v = v + torch.einsum("nck,k->nc", bid, st.alpha)
        if bexp.shape[2]:
            v = v + torch.einsum("nck,k->nc", bexp, st.beta)
        return v + st.offsets[idx]

    def _full_points(self, st: _State) -> torch.Tensor:
        """Model-frame vertices (N, 3) of a state (identity part cached while α is unchanged)."""
        t = self._t
        if self._id_cache is None or not torch.equal(self._id_cache[0], st.alpha):
            v_id = t.mean_shape
            if t.id_basis.shape[2]:
                v_id = v_id + torch.einsum("nck,k->nc", t.id_basis, st.alpha)
            self._id_cache = (st.alpha.clone(), v_id)
        v = self._id_cache[1]
        if t.exp_basis.shape[2]:
            v = v + torch.einsum("nck,k->nc", t.exp_basis, st.beta)
        return v + st.offsets

    # -- initialisation --------------------------------------------------------------------

    def _cold_pose(self, obs: FrameObservation, cams: list[_Cam], alpha: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        model = self._model
        det_idx = model.landmark_detector_index
        n_det = int(det_idx.max()) + 1
        points, valid, _ = lift_landmarks(obs, n_det)
        lm_model = (self._lm_mean + (torch.einsum("nck,k->nc", self._lm_id, alpha) if model.n_id else 0)).cpu().numpy()
        rows = np.flatnonzero(valid[det_idx])
        if len(rows) >= 6:
            src, dst = lm_model[rows].astype(np.float64), points[det_idx[rows]]
            r, t = kabsch(src, dst)
            for _ in range(2):
                err = np.linalg.norm(src @ r.T + t - dst, axis=1)
                keep = err < max(3.0 * np.median(err), 0.01)
                if keep.sum() < 6:
                    break
                r, t = kabsch(src[keep], dst[keep])
            return r, t
        # No depth at the landmarks: a frontal face towards the camera with the most landmarks, at the
        # distance where the model's landmark spread matches the observed one.
        best = max(cams, key=lambda c: len(c.lm_rows))
        rows_c = best.lm_rows.cpu().numpy()
        target = best.lm_target.cpu().numpy()
        src = lm_model[rows_c]
        spread_model = np.sqrt(((src[:, :2] - src[:, :2].mean(0)) ** 2).sum(1).mean())
        spread_px = np.sqrt(((target - target.mean(0)) ** 2).sum(1).mean())
        f = 0.5 * (best.camera.fx + best.camera.fy)
        z = f * spread_model / max(spread_px, 1e-6)
        ctr = target.mean(0)
        ray = np.array([(ctr[0] - best.camera.cx) / best.camera.fx, (ctr[1] - best.camera.cy) / best.camera.fy, 1.0])
        r_cam = R_CAMERA_FROM_MODEL_FRONTAL
        t_cam = ray * z - r_cam @ src.mean(0)
        r_rc = best.r_cam_from_ref.cpu().numpy().astype(np.float64).T
        t_rc = -r_rc @ best.t_cam_from_ref.cpu().numpy().astype(np.float64)
        return r_rc @ r_cam, r_rc @ t_cam + t_rc

    # -- the solver ------------------------------------------------------------------------

    def _fit(self, obs, warm_start, fit_identity, initial_pose=None) -> FitResult:
        with torch.no_grad():
            return self._fit_impl(obs, warm_start, fit_identity, initial_pose)

    def _fit_impl(self, obs, warm_start, fit_identity, initial_pose) -> FitResult:
        cfg = self.config
        model = self._model
        dev = self.device
        f32 = dict(dtype=torch.float32, device=dev)
        cams = self._prepare(obs)
        if fit_identity is None:
            fit_identity = self._fitted_frames < cfg.identity_frames
        fit_identity = bool(fit_identity) and model.n_id > 0
        flags: list[str] = []
        if warm_start is not None and (warm_start.model_name != model.name or warm_start.offsets.shape != (model.n_vertices, 3)):
            raise ValueError(
                f"warm start is for model {warm_start.model_name!r} with {len(warm_start.offsets)} vertices, "
                f"not {model.name!r} with {model.n_vertices}"
            )
        if warm_start is not None and not np.isfinite(warm_start.vertices).all():
            warm_start = None
        if warm_start is not None:
            alpha = torch.as_tensor(warm_start.id_coeffs, **f32)
            st = _State(torch.as_tensor(warm_start.pose.rotation, **f32), torch.as_tensor(warm_start.pose.translation, **f32),
                        alpha, torch.as_tensor(warm_start.exp_coeffs, **f32), torch.as_tensor(warm_start.offsets, **f32))
            prev = st.clone()
            prev_offsets = st.offsets
            max_iter = cfg.warm_iterations
        else:
            flags.append("cold_start")
            alpha = torch.as_tensor(self._identity, **f32) if self._identity is not None \
                else torch.zeros(model.n_id, **f32)
            r0, t0 = initial_pose if initial_pose is not None else self._cold_pose(obs, cams, alpha)
            st = _State(torch.as_tensor(r0, **f32), torch.as_tensor(t0, **f32), alpha,
                        torch.zeros(model.n_exp, **f32), torch.zeros((model.n_vertices, 3), **f32))
            prev = None
            prev_offsets = st.offsets
            max_iter = cfg.cold_iterations
        if not fit_identity and model.n_id:
            flags.append("identity_frozen")
        self._lm_batch = _LandmarkBatch.build(cams, model.n_landmarks)
        flags += self._make_patches(cams, st)
        with_patch = [c for c in cams if c.patch is not None]
        self._patches = PatchSet(
            [c.camera for c in with_patch], [c.patch for c in with_patch],
            torch.stack([c.r_cam_from_ref for c in with_patch]), torch.stack([c.t_cam_from_ref for c in with_patch]),
        ) if with_patch else None
        self._update_normals(st, warm_start)
        depth_used = self._patches is not None
        if not depth_used:
            flags.append("no_depth")
            # Once per run of such frames: every result carries the flag anyway.
            log = logger.debug if self._no_depth_run else logger.warning
            log("frame %s: no usable depth near the face; landmark-only fit", obs.frame_index)
        self._no_depth_run = not depth_used

        n_id = model.n_id if fit_identity else 0
        n_par = 6 + n_id + model.n_exp
        damping = cfg.initial_damping
        converged = False
        it_done = 0
        previous_start_cost = math.inf
        for it in range(max_iter):
            widened = prev is None and it < 3  # a cold start's first associations need a wider gate
            gate = cfg.depth_gate_m * (3.0 if widened else 1.0)
            assoc = self._associate(st, gate)
            h, g, cost = self._normal_equations(cams, st, prev, assoc, fit_identity, n_par, with_jac=True)
            if not widened and cost > (1 - cfg.cost_tolerance) * previous_start_cost:
                # Re-association gave back what the last step gained: the ICP-style limit cycle of
                # discrete pixel associations around the optimum.
                converged = True
                break
            previous_start_cost = cost if not widened else math.inf
            accepted = False
            for _ in range(8):
                a = h + damping * torch.diag(torch.diagonal(h).clamp_min(1e-9)) + 1e-9 * torch.eye(n_par, dtype=h.dtype, device=h.device)
                try:
                    delta = torch.linalg.solve(a, -g)
                except RuntimeError:
                    damping *= 10
                    continue
                cand = self._apply_step(st, delta.to(torch.float32), fit_identity)
                new_cost = self._normal_equations(cams, cand, prev, assoc, fit_identity, n_par, with_jac=False)
                if new_cost <= cost:
                    st = cand
                    damping = max(damping / 3, 1e-7)
                    accepted = True
                    break
                damping *= 8
            it_done = it + 1
            logger.debug("iteration %d: cost %.6g -> %s, damping %.2g, |step| %.3g", it, cost,
                         f"{new_cost:.6g}" if accepted else "rejected", damping, float(delta.abs().max()))
            if not accepted:
                converged = True  # no descent direction left under these associations
                break
            d = delta.cpu().numpy()
            if widened:
                continue
            if cost - new_cost < cfg.cost_tolerance * cost:
                converged = True
                break
            if (np.abs(d[:3]).max() < cfg.step_tolerance and np.abs(d[3:6]).max() < 0.1 * cfg.step_tolerance
                    and (n_par == 6 or np.abs(d[6:]).max() < 10 * cfg.step_tolerance)):
                converged = True
                break

        if self._offset_reg is not None:
            st, full = self._offset_step(cams, st, prev_offsets)
        else:
            full = self._full_points(st)
        if fit_identity:
            self._identity = st.alpha.cpu().numpy().astype(np.float32)
        result = self._result(obs, cams, st, full, it_done, converged, depth_used, flags)
        self._last_fit, self._final_full = result, full
        return result

    def _apply_step(self, st: _State, delta: torch.Tensor, fit_identity: bool) -> _State:
        n_id = self._model.n_id if fit_identity else 0
        r = so3_exp_torch(delta[:3]) @ st.rotation
        t = st.translation + delta[3:6]
        alpha = st.alpha + delta[6:6 + n_id] if n_id else st.alpha
        beta = st.beta + delta[6 + n_id:]
        return _State(r, t, alpha, beta, st.offsets)

    def _associate(self, st: _State, gate: float):
        """Depth samples vs this frame's patches: (ok (K, S) as 0/1 float, targets (K, S, 3),
        target normals (K, S, 3)) for the K cameras with depth, or None.

        Dense over the samples (unassociated rows get weight 0 later): on the CPU, masked
        arithmetic over all S rows is cheaper than gathering the associated rows' bases.
        """
        ps = self._patches
        if ps is None:
            return None
        pts = self._sub_points(st, self._s_mean, self._s_id, self._s_exp, self._samples)
        x_ref = pts @ st.rotation.T + st.translation
        n_ref = self._frame_sample_normals @ st.rotation.T
        ok, p, n = ps.associate(ps.to_cameras(x_ref), torch.einsum("kij,mj->kmi", ps.r, n_ref), gate,
                                self.config.depth_min_normal_cos)
        if not bool(ok.any()):
            return None
        return ok.to(p.dtype), p, n

    def _update_normals(self, st: _State, warm_start: FitResult | None) -> None:
        """Model-frame vertex normals for this frame's visibility tests.

        They only gate associations and the shape changes little between frames, so a warm start
        from this fitter's previous result reuses that frame's final vertices (no basis
        evaluation) and refreshes the normals every `normals_refresh_frames` frames only.
        """
        chained = warm_start is not None and warm_start is self._last_fit and self._final_full is not None
        if chained and self._normals_age + 1 < self.config.normals_refresh_frames:
            self._normals_age += 1
            return
        full = self._final_full if chained else self._full_points(st)
        self._frame_normals = vertex_normals_torch(full, self._t.triangles)
        self._frame_sample_normals = self._frame_normals[self._samples]
        self._normals_age = 0

    def _normal_equations(self, cams, st: _State, prev: _State | None, assoc, fit_identity: bool, n_par: int, with_jac: bool):
        """Gauss-Newton system (H (P, P) float64, g (P,), cost) or, with with_jac False, the cost only."""
        cfg = self.config
        model = self._model
        dev = self.device
        n_id = model.n_id if fit_identity else 0
        r_mat, t_vec = st.rotation, st.translation
        blocks_j, blocks_r, blocks_w = [], [], []
        cost = 0.0
        lm_pts = self._sub_points(st, self._lm_mean, self._lm_id, self._lm_exp, self._t.landmark_vertex)
        inv_lm = 1.0 / cfg.landmark_sigma_px**2
        lb = self._lm_batch
        if lb is not None:
            rp = lm_pts @ r_mat.T
            uv, jp = lb.project(rp + t_vec)
            res = uv - lb.target  # (K, L, 2)
            norm = torch.linalg.norm(res, dim=-1)
            cost += inv_lm * float((lb.conf * _huber_cost(norm, cfg.landmark_huber_px)).sum())
            if with_jac:
                w = (lb.conf * _huber_weight(norm, cfg.landmark_huber_px) * inv_lm)[..., None].expand_as(res)
                jt = jp @ lb.r[:, None]  # (K, L, 2, 3) d uv / d X_ref
                jw = -jt @ skew_torch(rp)[None]
                parts = [jw, jt]
                a = jt @ r_mat  # d uv / d model point
                if n_id:
                    parts.append(a @ self._lm_id[None])
                if model.n_exp:
                    parts.append(a @ self._lm_exp[None])
                blocks_j.append(torch.cat(parts, -1).reshape(-1, n_par))
                blocks_r.append(res.reshape(-1))
                blocks_w.append(w.reshape(-1))
        inv_d = 1.0 / cfg.depth_sigma_m**2
        if assoc is not None:
            ok, p, n = assoc
            ps = self._patches
            s_pts = self._sub_points(st, self._s_mean, self._s_id, self._s_exp, self._samples)
            rp = s_pts @ r_mat.T
            xc = ps.to_cameras(rp + t_vec)  # (K, S, 3)
            res = (n * (xc - p)).sum(-1) * ok
            ar = res.abs()
            cost += inv_d * float((_huber_cost(ar, cfg.depth_huber_m) * ok).sum())
            if with_jac:
                w = _huber_weight(ar, cfg.depth_huber_m) * (inv_d * ok)
                g_ref = torch.einsum("ksi,kij->ksj", n, ps.r)  # n^T R_c, (K, S, 3)
                jw = torch.linalg.cross(rp.expand_as(g_ref), g_ref, dim=-1)
                parts = [jw, g_ref]
                nm = g_ref @ r_mat  # normals in the model frame
                for basis in ((self._s_id_c,) if n_id else ()) + ((self._s_exp_c,) if model.n_exp else ()):
                    parts.append(nm[..., 0:1] * basis[0] + nm[..., 1:2] * basis[1] + nm[..., 2:3] * basis[2])
                blocks_j.append(torch.cat(parts, -1).reshape(-1, n_par))
                blocks_r.append(res.reshape(-1))
                blocks_w.append(w.reshape(-1))
        # Priors and temporal terms: diagonal, added directly.
        prior_diag = torch.zeros(n_par, dtype=torch.float64, device=dev)
        prior_grad = torch.zeros(n_par, dtype=torch.float64, device=dev)

        def quad(sl: slice, value: torch.Tensor, weight: float):
            nonlocal cost
            v = value.to(torch.float64)
            cost += float(weight * (v * v).sum())
            prior_diag[sl] += weight
            prior_grad[sl] += weight * v

        if n_id:
            quad(slice(6, 6 + n_id), st.alpha, cfg.id_prior_weight)
            if prev is not None:
                quad(slice(6, 6 + n_id), st.alpha - prev.alpha, cfg.id_temporal_weight)
        if model.n_exp:
            quad(slice(6 + n_id, n_par), st.beta, cfg.exp_prior_weight)
            if prev is not None:
                quad(slice(6 + n_id, n_par), st.beta - prev.beta, cfg.exp_temporal_weight)
        if prev is not None:
            w_rel = torch.as_tensor(so3_log((st.rotation @ prev.rotation.T).cpu().numpy().astype(np.float64)),
                                    dtype=torch.float64, device=dev)
            quad(slice(0, 3), w_rel, 1.0 / cfg.rotation_temporal_sigma**2)
            quad(slice(3, 6), st.translation - prev.translation, 1.0 / cfg.translation_temporal_sigma**2)
        if not with_jac:
            return cost
        if blocks_j:
            j = torch.cat(blocks_j, 0)
            r = torch.cat(blocks_r, 0)
            w = torch.cat(blocks_w, 0)
            jw_ = j * w[:, None]
            h = (jw_.T @ j).to(torch.float64)
            g = (jw_.T @ r).to(torch.float64)
        else:
            h = torch.zeros((n_par, n_par), dtype=torch.float64, device=dev)
            g = torch.zeros(n_par, dtype=torch.float64, device=dev)
        h = h + torch.diag(prior_diag)
        g = g + prior_grad
        return h, g, cost

    def _offset_step(self, cams: list[_Cam], st: _State, prev_offsets: torch.Tensor) -> tuple[_State, torch.Tensor]:
        """One regularized least-squares step for the offsets; returns (new state, its model-frame vertices)."""
        cfg = self.config
        model = self._model
        n = model.n_vertices
        dev = self.device
        full = self._full_points(st)
        normals = self._frame_normals
        # Coordinate-first (3, 3, N) / (3, N) layout: see OffsetRegularizer.solve.
        h = torch.zeros((3, 3, n), dtype=torch.float32, device=dev)
        g = torch.zeros((3, n), dtype=torch.float32, device=dev)
        r_mat, t_vec = st.rotation, st.translation
        offsets_cf = st.offsets.T.contiguous()
        inv_d = 1.0 / cfg.depth_sigma_m**2
        any_data = False
        # Depth data on a fixed vertex subset (~2 mm apart on the BFM, about the depth sampling):
        # the smoothness terms carry it to every vertex at a fraction of the association cost.
        sub = self._offset_data_idx
        x_ref = full[sub] @ r_mat.T + t_vec
        n_ref = normals[sub] @ r_mat.T
        off_sub = offsets_cf[:, sub]
        ps = self._patches
        if ps is not None:
            xc = ps.to_cameras(x_ref)  # (K, M, 3)
            ok, p, nd = ps.associate(xc, torch.einsum("kij,mj->kmi", ps.r, n_ref), cfg.depth_gate_m,
                                     cfg.depth_min_normal_cos)
            any_data = bool(ok.any())
            # Dense over the subset with zero weight where unassociated: cheaper than gathers.
            res = (nd * (xc - p)).sum(-1)
            w = _huber_weight(res.abs(), cfg.depth_huber_m) * (inv_d * ok.to(res.dtype))
            n_model = torch.einsum("kmi,kij->kmj", nd, ps.r) @ r_mat  # (K, M, 3) model-frame normals
            c = res - (n_model * off_sub.T[None]).sum(-1)
            wn = w[..., None] * n_model
            h_sub = torch.stack([torch.stack([(wn[..., i] * n_model[..., j]).sum(0) for j in range(3)])
                                 for i in range(3)])  # (3, 3, M)
            g_sub = (wn * c[..., None]).sum(0).T  # (3, M)
        else:
            h_sub = torch.zeros((3, 3, len(sub)), dtype=torch.float32, device=dev)
            g_sub = torch.zeros((3, len(sub)), dtype=torch.float32, device=dev)
        h[:, :, sub] = h_sub
        g[:, sub] = g_sub
        lb = self._lm_batch
        if cfg.offset_landmark_weight > 0 and lb is not None:
            inv_lm = cfg.offset_landmark_weight / cfg.landmark_sigma_px**2
            vid = self._t.landmark_vertex
            uv, jp = lb.project(full[vid] @ r_mat.T + t_vec)
            res = uv - lb.target
            w = lb.conf * _huber_weight(torch.linalg.norm(res, dim=-1), cfg.landmark_huber_px) * inv_lm  # (K, L)
            a = jp @ lb.r[:, None] @ r_mat  # (K, L, 2, 3) d uv / d offset
            c = res - (a @ st.offsets[vid][None, :, :, None])[..., 0]
            at = a.transpose(-1, -2)
            blocks = (w[..., None, None] * (at @ a)).sum(0)  # (L, 3, 3)
            grads = (w[..., None] * (at @ c[..., None])[..., 0]).sum(0)  # (L, 3)
            h.index_add_(2, vid, blocks.permute(1, 2, 0))
            g.index_add_(1, vid, grads.T)
            any_data = True
        if not any_data:
            return st, full
        offsets = self._offset_reg.solve(
            h, g, cfg.offset_magnitude_weight * inv_d, cfg.offset_temporal_weight * inv_d,
            prev_offsets.T.contiguous(), offsets_cf, cfg.offset_cg_iterations,
        )
        new_offsets = offsets.T.contiguous()
        # The vertices with the new offsets, without re-evaluating the bases.
        return _State(st.rotation, st.translation, st.alpha, st.beta, new_offsets), full - st.offsets + new_offsets

    # -- results ---------------------------------------------------------------------------

    def _result(self, obs, cams, st: _State, full: torch.Tensor, iterations: int, converged: bool,
                depth_used: bool, flags: list[str]) -> FitResult:
        cfg = self.config
        r64 = st.rotation.cpu().numpy().astype(np.float64)
        u, _s, vt = np.linalg.svd(r64)
        r64 = u @ vt  # re-orthonormalize: float32 updates drift slowly
        t64 = st.translation.cpu().numpy().astype(np.float64)
        # In torch: numpy's BLAS would start its own threads (not bound by torch.set_num_threads).
        r_t64 = torch.as_tensor(r64, dtype=torch.float64, device=self.device)
        t_t64 = torch.as_tensor(t64, dtype=torch.float64, device=self.device)
        verts = (full.to(torch.float64) @ r_t64.T + t_t64).to(torch.float32).cpu().numpy()
        residuals: dict[str, float] = {}
        lm_sq, lm_n = 0.0, 0
        lm_pts = self._sub_points(st, self._lm_mean, self._lm_id, self._lm_exp, self._t.landmark_vertex)
        r_t = torch.as_tensor(r64, dtype=torch.float32, device=self.device)
        lb = self._lm_batch
        if lb is not None:
            uv, _ = lb.project(lm_pts @ r_t.T + st.translation)
            e = ((uv - lb.target) ** 2).sum(-1)
            seen = lb.conf > 0
            for k, index in enumerate(lb.cam_index):
                ek = e[k][seen[k]]
                residuals[f"landmark_rms_px/cam{index}"] = float(ek.mean().sqrt())
                lm_sq += float(ek.sum())
                lm_n += len(ek)
        if lm_n:
            residuals["landmark_rms_px"] = math.sqrt(lm_sq / lm_n)
        if depth_used:
            st_out = _State(r_t, st.translation, st.alpha, st.beta, st.offsets)
            assoc = self._associate(st_out, cfg.depth_gate_m)
            sq, cnt = 0.0, 0
            if assoc is not None:
                ok, p, n = assoc
                s_pts = self._sub_points(st_out, self._s_mean, self._s_id, self._s_exp, self._samples)
                xc = self._patches.to_cameras(s_pts @ r_t.T + st.translation)
                res = (n * (xc - p)).sum(-1) * ok
                sq = float((res * res).sum())
                cnt = int(ok.sum())
            residuals["depth_rms_mm"] = 1e3 * math.sqrt(sq / cnt) if cnt else float("nan")
            residuals["depth_inliers"] = float(cnt)
        return FitResult(
            vertices=verts,
            pose=Pose(r64, t64),
            id_coeffs=st.alpha.cpu().numpy().astype(np.float32),
            exp_coeffs=st.beta.cpu().numpy().astype(np.float32),
            offsets=st.offsets.cpu().numpy().astype(np.float32),
            residuals=residuals,
            iterations=iterations,
            converged=converged,
            lost=False,
            depth_used=depth_used,
            flags=tuple(flags),
            frame_index=obs.frame_index,
            model_name=self._model.name,
        )

    def _lost(self, obs: FrameObservation, reason: str, count: bool = True) -> FitResult:
        if count:
            self._lost_run += 1
        logger.info("frame %s: %s", obs.frame_index, reason)
        if self._last is not None:
            return replace(self._last, lost=True, iterations=0, converged=False, flags=(reason,),
                           frame_index=obs.frame_index, residuals={})
        n = self._model.n_vertices if self._model is not None else 0
        k_id = self._model.n_id if self._model is not None else 0
        k_exp = self._model.n_exp if self._model is not None else 0
        return FitResult(
            vertices=np.full((n, 3), np.nan, np.float32),
            pose=Pose(np.eye(3), np.zeros(3)),
            id_coeffs=np.zeros(k_id, np.float32),
            exp_coeffs=np.zeros(k_exp, np.float32),
            offsets=np.zeros((n, 3), np.float32),
            residuals={},
            iterations=0,
            converged=False,
            lost=True,
            depth_used=False,
            flags=(reason,),
            frame_index=obs.frame_index,
            model_name=self._model.name if self._model is not None else "",
        )
