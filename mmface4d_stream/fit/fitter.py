"""The per-frame face fitter for one stream: warm-started Levenberg-Marquardt, then offsets.

`FaceFitter` is the single-stream use (B = 1) of the batched solver core:
- `lm_solver`: the frame solve (pose, identity and expression coefficients by LM with per-stream
  masked decisions; `offsets` for the per-vertex step), fixed shapes, no host reads;
- `landmark_term`, `depth_term`: the cost terms; `frame_prep`: host-side cameras and depth crops;
- `multi.MultiStreamFitter`: the streaming policy (lost faces, template building, warm and cold
  starts, restarts, identity freezing) for any number of streams; `cuda_graph`: capture/replay.

    X_i = R (mean_i + B_id,i α + B_exp,i β + d_i) + t           reference frame, metres

Streaming (`process`): each frame is warm-started from the previous result, so a few iterations
suffice (`warm_iterations`); a frame where no camera sees a face returns the previous result
flagged `lost=True` (never a made-up mesh); frames without usable depth are fitted to the landmarks
alone and flagged. The default model (`model=None`) is the built-in template
(`face.template_model.TemplateModel`), built from the first frame with a face and depth.

Everything is deterministic for a given input on a given device and thread count (no random
choices at run time; the vertex subsets come from a fixed seed). On CUDA, `index_add_` (landmark
offset blocks) adds floats in a nondeterministic order: results agree to ~1e-7. Threads: the
per-frame work is many small tensor ops; on a shared CPU, `torch.set_num_threads(1)` per fitter
process is usually faster than OpenMP's spin-waiting threads. On CUDA each solve shape is captured
once as a CUDA graph and replayed (`cuda_graphs=False`: eager launches).

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

from mmface4d_stream.face.models import FaceModel
from mmface4d_stream.fit.fitter_config import FitterConfig
from mmface4d_stream.fit.multi import MultiStreamFitter
from mmface4d_stream.fit.fit_io import FitResult, FrameObservation

__all__ = ["FitterConfig", "FaceFitter"]


class FaceFitter:
    """Fit a `FaceModel` to synchronized RGB-D frames from 1 to K cameras, one stream.

    Args:
        model: the face model; None: the built-in template, built from the first frame with a face
            and depth (see `TemplateModel.from_points`).
        config: `FitterConfig`.
        device: torch device ("cpu", "cuda", ...).
        cuda_graphs: on CUDA, replay each frame as a captured CUDA graph.
    Use `process(obs)` on a stream (keeps the warm start, identity and lost-face state) or
    `fit(obs, warm_start=...)` for a single frame.
    """

    def __init__(self, model: FaceModel | None = None, config: FitterConfig | None = None, device="cpu",
                 cuda_graphs: bool = True):
        self._core = MultiStreamFitter(model, config, device, cuda_graphs=cuda_graphs)
        self._slot = self._core.open_stream()
        self.config = self._core.config
        self.device = self._core.device

    @property
    def model(self) -> FaceModel | None:
        """The model being fitted (None until the template is built when constructed without one)."""
        return self._core.model(self._slot)

    def reset(self) -> None:
        """Forget the stream: warm start, identity estimate and counters (the model is kept)."""
        self._core.reset_stream(self._slot, keep_model=True)

    def stream_state(self, include_model: bool | None = None) -> dict:
        """The stream state after the last frame, picklable, for checkpoints (see
        `MultiStreamFitter.stream_state`)."""
        return self._core.stream_state(self._slot, include_model)

    def restore_stream_state(self, state: dict) -> None:
        """Continue from a `stream_state()` (see there)."""
        self._core.restore_stream_state(self._slot, state)

    def process(self, obs: FrameObservation) -> FitResult:
        """Fit the next frame of the stream, warm-started from the previous one.

        Returns the previous result flagged `lost=True` when no camera sees a face (NaN vertices if
        there was none yet).
        """
        return self._core.process({self._slot: obs})[self._slot]

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
        return self._core.fit_frame(self._slot, obs, warm_start, fit_identity)
