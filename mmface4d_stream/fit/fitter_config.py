"""Settings of the face fitter (one place for every weight, tolerance and iteration budget)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FitterConfig", "RASTER_MODES"]

# The allowed values of `FitterConfig.raster` (the rasterized depth term, `fit/raster_term.py`, and
# with "depth+color" the photometric term on its samples, `fit/color_term.py`).
RASTER_MODES = ("off", "depth", "depth+color")
# The allowed values of `FitterConfig.raster_backend` (`fit.raster.make_rasterizer`).
RASTER_BACKENDS = ("auto", "gl", "nvdiffrast")


@dataclass(frozen=True)
class FitterConfig:
    """Fitter settings; weights are relative to one squared, sigma-normalized data residual.

    Iterations:
        cold_iterations: LM iterations for a frame without a warm start.
        warm_iterations: LM iterations for a warm-started frame.
        fast_iterations: LM iterations for a hurried warm-started frame (`FrameObservation.hurry`:
            the live policy's late frames), which also skips the offset step.
        step_tolerance: converged when no rotation (rad) / translation (m) / coefficient changes more
            than this (translation uses it ×0.1, coefficients ×10).
        cost_tolerance: ... or when an accepted step lowers the cost by less than this fraction, or
            when, after re-association, the cost is not this fraction below the previous
            iteration's (pixel-discrete associations make ICP-style costs cycle near the optimum).
    Landmarks:
        landmark_sigma_px: expected detector noise, pixels (MediaPipe on a ~250 px wide face:
            ~3 px rms).  landmark_huber_px: robust threshold.  landmark_lower_face_weight: the
            weight of the landmarks on the lips and the skin below them, the face's outline
            excepted (`fit/landmark_weights.py`: MediaPipe's bias there grows with the mouth's
            opening; the depth terms shape the mouth).
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
    Rasterized depth term (`fit/raster_term.py`): `raster` "off" or "depth" (per-pixel
        point-to-plane samples from a rendering of the frame's starting mesh, in the LM iterations
        and the offset step); `raster_samples` samples kept per camera; `raster_weight` scales them
        against the sparse depth term (same σ and Huber threshold); `raster_backend` "auto", "gl"
        (CPU, OpenGL) or "nvdiffrast" (CUDA). "depth+color" adds the photometric term
        (`fit/color_term.py`) on the same samples: `color_sigma`, `color_huber`, `color_gate`
        (colour units, 1 = full scale) its noise, robust threshold and rejection; `color_weight`
        its weight in units of 1/color_sigma²; per-vertex albedo from the median of the first
        `albedo_frames` observations, then an exponential update at `albedo_rate` with steps
        clamped to `albedo_step_max`.
    template_subdivisions: subdivision levels of the built-in template (2: 6,996 vertices).
    """

    cold_iterations: int = 20
    warm_iterations: int = 4
    fast_iterations: int = 2
    step_tolerance: float = 1e-4
    cost_tolerance: float = 1e-3
    initial_damping: float = 1e-4

    landmark_sigma_px: float = 3.0
    landmark_huber_px: float = 6.0
    landmark_lower_face_weight: float = 0.3

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
    offset_temporal_weight: float = 2.0
    offset_landmark_weight: float = 1.0
    offset_cg_iterations: int = 6
    offset_data_vertices: int = 12000

    restart_landmark_rms_px: float = 25.0
    max_lost_frames_warm: int = 10
    template_subdivisions: int = 2

    raster: str = "off"
    raster_samples: int = 1000
    raster_weight: float = 1.0
    raster_backend: str = "auto"
    color_sigma: float = 0.1
    color_huber: float = 0.03
    color_gate: float = 0.3
    color_weight: float = 1.0
    albedo_frames: int = 8
    albedo_rate: float = 0.1
    albedo_step_max: float = 0.05

    def __post_init__(self):
        if self.raster not in RASTER_MODES:
            raise ValueError(f"raster must be one of {RASTER_MODES}, got {self.raster!r}")
        if self.raster_backend not in RASTER_BACKENDS:
            raise ValueError(f"raster_backend must be one of {RASTER_BACKENDS}, got {self.raster_backend!r}")
