"""Per-frame stages between sources and sinks (no Ray here).

`LandmarkStage` (one per camera set): MediaPipe landmarks, then a crop around the face so only
small arrays travel further. `FitStage`: the rig's extrinsics and the warm-started fitter.
`SmoothStage`: causal Butterworth on the vertices. Their settings, with the defaults, are the
typed configs of `pipeline.stage_config` (each builds its stage); the rig is `pipeline.rig_setup`'s.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from typing import Sequence

import numpy as np

from mmface4d_stream.errors import InputError, StageError
from mmface4d_stream.face.landmarks import FaceLandmarker, LandmarkerConfig
from mmface4d_stream.pipeline.sources import DepthRegistrations, with_rgb
from mmface4d_stream.smooth import DEFAULT_CUTOFF_HZ, DEFAULT_FPS, DEFAULT_ORDER
from mmface4d_stream.frame_records import CameraFrame, FaceCrop, FrameSet, MeshFrame, ObservedFrame

log = logging.getLogger(__name__)

# The crop keeps this many face widths around the landmarks' box: the depth term and the offsets
# need the cheeks and forehead beyond the outermost landmarks.
CROP_MARGIN = 0.35
THUMBNAIL_SIDE_PX = 160


def _stage_error(stage: str, seq: str, frame: int, camera: int | None, exc: BaseException) -> BaseException:
    """Wrap an unexpected exception with its frame context (user-input errors pass unchanged)."""
    if isinstance(exc, (InputError, StageError)):
        return exc
    return StageError(stage, seq, frame, camera, f"{type(exc).__name__}: {exc}")


def face_crop_box(points_px: np.ndarray, width: int, height: int, margin: float = CROP_MARGIN) -> tuple[int, int, int, int]:
    """Integer box (x0, y0, x1, y1) around finite landmarks (P, 2), grown by `margin` × size, clipped."""
    finite = points_px[np.isfinite(points_px).all(axis=1)]
    lo, hi = finite.min(axis=0), finite.max(axis=0)
    grow = (hi - lo).max() * margin
    x0, y0 = np.floor(lo - grow).astype(int)
    x1, y1 = np.ceil(hi + grow).astype(int) + 1
    return max(0, x0), max(0, y0), min(width, x1), min(height, y1)


def jpeg_thumbnail(rgb: np.ndarray, side: int = THUMBNAIL_SIDE_PX) -> tuple[bytes, int, int]:
    """A small JPEG (longest side `side` px) of an RGB crop, for previews: (bytes, width, height)."""
    from PIL import Image

    # A crop is a strided view: PIL's own copy of one costs ~100x numpy's (same pixels either way).
    image = Image.fromarray(np.ascontiguousarray(rgb))
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=70)
    return buffer.getvalue(), image.width, image.height


class LandmarkStage:
    """Detect landmarks in every camera of a frame set and crop each camera to its face.

    One `FaceLandmarker` per camera keeps its own tracked ROI. Output crops are (h, w) depth in
    millimetres and landmarks in crop pixels, with the camera of the whole image and the crop's
    offset (the fitter slices its per-camera tables with it).

    Cameras with raw depth (MKV replay, `CameraFrame.depth_raw`) are registered here, one
    registration per camera serial: while the face is tracked the landmarks need color only and
    just the crop's box is registered; to find a face (first frame, face lost) the landmarker
    gets the whole frame registered, as from a source that registers.

    cameras: the positions in the frame set this stage handles (None: all `n_cameras`). A stage per
    camera (`cameras=[k]`) lets the cameras of a frame set run in parallel (one process each); its
    `ObservedFrame` has a crop at position k only (None elsewhere) and `join_observed` puts the
    parts of one frame set together. Each camera has its own landmarker either way, so the
    results are the same.
    """

    def __init__(self, n_cameras: int, config: LandmarkerConfig | None = None, thumbnails: bool = False,
                 cameras: Sequence[int] | None = None, color_crops: bool = False, thumbnail_hz: float = 10.0):
        self.cameras = list(range(n_cameras)) if cameras is None else [int(k) for k in cameras]
        if any(k < 0 or k >= n_cameras for k in self.cameras):
            raise ValueError(f"cameras must be positions in [0, {n_cameras}), got {self.cameras}")
        if not thumbnail_hz > 0:
            raise ValueError(f"thumbnail_hz must be positive, got {thumbnail_hz}")
        self._landmarkers = {k: FaceLandmarker(config) for k in self.cameras}
        self.thumbnails = thumbnails
        # A camera's thumbnail goes with the first frame of each 1/thumbnail_hz slot of capture time.
        self._thumbnail_period_ns = int(round(1e9 / thumbnail_hz))
        self._thumbnail_slot: dict[int, int] = {}
        self.color_crops = bool(color_crops)  # crops carry their RGB (the fitter's depth+color term)
        self.registrations = DepthRegistrations()

    def _wants_thumbnail(self, index: int, t_capture_ns: int) -> bool:
        """Whether camera position `index`'s crop at capture time `t_capture_ns` carries a thumbnail:
        at most one per `1 / thumbnail_hz` slot of capture time (deterministic in replays)."""
        if not self.thumbnails:
            return False
        slot = int(t_capture_ns) // self._thumbnail_period_ns
        if self._thumbnail_slot.get(index) == slot:
            return False
        self._thumbnail_slot[index] = slot
        return True

    def _one(self, index: int, camera: CameraFrame, t_capture_ns: int) -> FaceCrop:
        camera = with_rgb(camera)  # (a live replay's colour arrives undecoded)
        landmarker = self._landmarkers[index]
        full_depth = camera.depth_mm
        result = None
        if full_depth is None and camera.depth_raw is not None:
            result = landmarker.track(camera.rgb)
            if result is None:
                full_depth = self.registrations.full(camera)
        if result is None:
            result = landmarker.process(camera.rgb, full_depth)
        height, width = camera.rgb.shape[:2]
        if not result.found:
            return FaceCrop(camera.camera, camera.serial, False, 0.0, result.points_px, None, camera.intrinsics, (0, 0))
        box = face_crop_box(result.points_px, width, height)
        x0, y0, x1, y1 = box
        if full_depth is not None:
            depth = np.ascontiguousarray(full_depth[y0:y1, x0:x1])
        else:
            depth = self.registrations.crop(camera, box)
        thumbnail = jpeg_thumbnail(camera.rgb[y0:y1, x0:x1]) if self._wants_thumbnail(index, t_capture_ns) else None
        color = np.ascontiguousarray(camera.rgb[y0:y1, x0:x1]) if self.color_crops and depth is not None else None
        points = (result.points_px - np.float32([x0, y0])).astype(np.float32)
        return FaceCrop(camera.camera, camera.serial, True, float(result.confidence), points, depth,
                        camera.intrinsics, (x0, y0), thumbnail, color)

    def process(self, frame_set: FrameSet) -> ObservedFrame:
        start = time.perf_counter()
        crops = []
        for k, cam in enumerate(frame_set.cameras):
            try:
                crops.append(None if cam is None or k not in self._landmarkers
                             else self._one(k, cam, frame_set.t_capture_ns))
            except Exception as exc:
                wrapped = _stage_error("landmarks", frame_set.seq, frame_set.frame, cam.camera, exc)
                if wrapped is exc:
                    raise
                raise wrapped from exc
        timings = dict(frame_set.timings_ms, landmarks=(time.perf_counter() - start) * 1e3)
        return ObservedFrame(frame_set.seq, frame_set.frame, frame_set.t_capture_ns, crops,
                             frame_set.t_source_ns, timings)

    def reset(self) -> None:
        """Forget every camera's tracked face (a new sequence); the MediaPipe graphs are kept."""
        for landmarker in self._landmarkers.values():
            landmarker.reset()
        self._thumbnail_slot.clear()

    def close(self) -> None:
        for landmarker in self._landmarkers.values():
            landmarker.close()


class StreamSlot:
    """One slot of a `fit.multi.MultiStreamFitter`, seen as the single-stream fitter a `FitStage` drives
    (`process`, `model`, `stream_state`, `restore_stream_state`). `FitStage.process_batch` fits the
    frames of many such slots of one fitter in one `MultiStreamFitter.process` call."""

    def __init__(self, fitter, slot: int):
        self.multi, self.slot = fitter, slot

    @property
    def model(self):
        return self.multi.model(self.slot)

    def process(self, observation):
        return self.multi.process({self.slot: observation})[self.slot]

    def stream_state(self, include_model: bool | None = None) -> dict:
        return self.multi.stream_state(self.slot, include_model)

    def restore_stream_state(self, state: dict) -> None:
        self.multi.restore_stream_state(self.slot, state)


class FitStage:
    """Fit the face model to each observed frame, warm-started from the previous one.

    rig_transforms: per camera (in frame-set order) the 4x4 T_ref_from_cam; None for one camera
    (identity). `rig_setup.resolve_rig` gives them (a rig file, or calibrated on the first frames
    of a multi-camera sequence).
    fitter: the stream's fitter when it is not a new `FaceFitter(model, config, device)`: a
    `StreamSlot` of a fitter shared by many sequences (`model` is then that fitter's model, None for
    per-stream templates). The bookkeeping (lost frames, residual sums, checkpoints, faces) is the
    same either way.
    """

    def __init__(self, rig_transforms: Sequence[np.ndarray] | None = None, model=None, config=None,
                 device: str = "cpu", fitter=None):
        if fitter is None:
            from mmface4d_stream.fit.fitter import FaceFitter

            fitter = FaceFitter(model=model, config=config, device=device)
        self.fitter = fitter
        self._given_model = model
        self.rig_transforms = None if rig_transforms is None else [np.asarray(t, np.float64) for t in rig_transforms]
        self.lost_frames: list[int] = []
        self.hurried_frames = 0  # fitted the fast way (`ObservedFrame.hurry`)
        self.frames = 0
        self._residual_sums: dict[str, float] = {}

    def observation(self, observed: ObservedFrame):
        from mmface4d_stream.fit.fit_io import CameraObservation, FrameObservation

        cameras = []
        for k, crop in enumerate(observed.crops):
            if crop is None:
                continue
            transform = np.eye(4) if self.rig_transforms is None else self.rig_transforms[k]
            cameras.append(CameraObservation(
                intrinsics=crop.intrinsics,
                landmarks_px=crop.landmarks_px if crop.found else None,
                depth_mm=crop.depth_mm if crop.found else None,
                landmark_conf=None,
                T_ref_from_cam=transform,
                offset_px=crop.offset_px,
                color_rgb=crop.color_rgb if crop.found else None,
            ))
        return FrameObservation(cameras, frame_index=observed.frame, hurry=observed.hurry)

    def process(self, observed: ObservedFrame) -> MeshFrame:
        start = time.perf_counter()
        try:
            result = self.fitter.process(self.observation(observed))
        except Exception as exc:
            wrapped = _stage_error("fitter", observed.seq, observed.frame, None, exc)
            if wrapped is exc:
                raise
            raise wrapped from exc
        return self._record(observed, result, time.perf_counter() - start)

    @staticmethod
    def process_batch(frames: Sequence[tuple[FitStage, ObservedFrame]]) -> list[MeshFrame | BaseException]:
        """Fit one frame of each of several streams in one solve.

        frames: (stage, observed) pairs whose stages drive `StreamSlot`s of one `MultiStreamFitter`,
        at most one frame per stage. Returns per pair its `MeshFrame`, or the exception its stream
        failed with (a `StageError` naming that stream's sequence and frame, or an `InputError`):
        a frame whose observation cannot be built or fitted (bad camera data) fails alone; a failed
        solve fails every frame of the batch. Each mesh's `fit` timing is the whole solve (the frame's wait for it).
        """
        start = time.perf_counter()
        results: list[MeshFrame | BaseException | None] = [None] * len(frames)
        batch: dict[int, tuple[int, object]] = {}
        multi = None
        for i, (stage, observed) in enumerate(frames):
            if not isinstance(stage.fitter, StreamSlot) or (multi is not None and stage.fitter.multi is not multi):
                raise ValueError("process_batch needs stages driving StreamSlots of one MultiStreamFitter")
            multi = stage.fitter.multi
            if stage.fitter.slot in batch:
                raise ValueError(f"process_batch got two frames of fitter slot {stage.fitter.slot}")
            try:
                batch[stage.fitter.slot] = (i, stage.observation(observed))
            except Exception as exc:
                results[i] = _stage_error("fitter", observed.seq, observed.frame, None, exc)
        if batch:
            try:
                fitted = multi.process({slot: obs for slot, (_, obs) in batch.items()}, errors="return")
            except Exception as exc:
                for i, _ in batch.values():
                    observed = frames[i][1]
                    results[i] = _stage_error("fitter", observed.seq, observed.frame, None, exc)
            else:
                seconds = time.perf_counter() - start
                for slot, (i, _) in batch.items():
                    stage, observed = frames[i]
                    if isinstance(fitted[slot], Exception):  # this stream's frame alone was bad
                        results[i] = _stage_error("fitter", observed.seq, observed.frame, None, fitted[slot])
                    else:
                        results[i] = stage._record(observed, fitted[slot], seconds)
        return results

    def _record(self, observed: ObservedFrame, result, seconds: float) -> MeshFrame:
        """Count one fitted frame (lost face, residuals) and make its `MeshFrame`."""
        self.frames += 1
        self.hurried_frames += "hurried" in result.flags
        if result.lost:
            self.lost_frames.append(observed.frame)
        else:
            for key, value in result.residuals.items():
                if np.isfinite(value):
                    self._residual_sums[key] = self._residual_sums.get(key, 0.0) + float(value)
        thumbnails = tuple((c.camera, *c.thumbnail_jpeg) for c in observed.crops if c is not None and c.thumbnail_jpeg)
        timings = dict(observed.timings_ms, fit=seconds * 1e3)
        return MeshFrame(observed.seq, observed.frame, observed.t_capture_ns,
                         np.asarray(result.vertices, dtype=np.float32), bool(result.lost), tuple(result.flags),
                         {k: float(v) for k, v in result.residuals.items()}, False,
                         tuple(c.serial for c in observed.crops if c is not None), thumbnails,
                         observed.t_source_ns, timings)

    @property
    def faces(self) -> np.ndarray | None:
        model = self.fitter.model
        return None if model is None else np.asarray(model.triangles, dtype=np.int32)

    @property
    def model_name(self) -> str:
        model = self.fitter.model
        return "template (pending)" if model is None else model.name

    def summary(self) -> dict:
        fitted = self.frames - len(self.lost_frames)
        return {
            "model": self.model_name,
            "frames": self.frames,
            "frames_lost_face": list(self.lost_frames),
            "frames_hurried": self.hurried_frames,
            "mean_residuals": {k: v / fitted for k, v in sorted(self._residual_sums.items())} if fitted else {},
        }

    def state(self, with_model: bool = True) -> dict:
        """The stream state after the last frame (picklable): warm start, identity, counters, and the
        template model when the fitter built it and `with_model` (a user-given model is not copied;
        a template, ~1.7 MB, never changes once built: a stream's later checkpoints may leave it out
        and the keeper of checkpoints carry it over, `actors.records.Checkpoint.carry_model`).

        `restore(state)` on a fresh `FitStage` built with the same arguments continues the stream as
        if uninterrupted (up to the fitter's derived caches, rebuilt on the next frames).
        """
        return {
            "fitter": self.fitter.stream_state(include_model=self._given_model is None and with_model),
            "lost_frames": list(self.lost_frames),
            "frames": self.frames,
            "hurried_frames": self.hurried_frames,
            "residual_sums": dict(self._residual_sums),
        }

    def forget_counts(self) -> None:
        """Zero the frame, lost-face and residual counts, keeping the fitter's stream (warm start,
        identity, template): the frames fitted so far were a warm-up, not the sequence's."""
        self.lost_frames, self.frames, self.hurried_frames, self._residual_sums = [], 0, 0, {}

    def warm_up(self, observed: ObservedFrame) -> dict:
        """Fit a pre-roll frame before the capture clock starts (torch's first calls, the model pack
        and, for the template, the subject's model are done now): the stream keeps that fit as its
        warm start and its counts start at zero (`forget_counts`). Returns {"seconds", "lost"}."""
        start = time.perf_counter()
        mesh = self.process(observed)
        seconds = time.perf_counter() - start
        self.forget_counts()
        return {"seconds": round(seconds, 3), "lost": bool(mesh.lost)}

    def restore(self, state: dict) -> None:
        """Continue from a `state()` taken by a `FitStage` with the same model and rig."""
        self.fitter.restore_stream_state(state["fitter"])
        self.lost_frames = list(state["lost_frames"])
        self.frames = state["frames"]
        self.hurried_frames = state["hurried_frames"]
        self._residual_sums = dict(state["residual_sums"])

    def close(self) -> None:
        pass


class SmoothStage:
    """Causal Butterworth low-pass on the vertices (streaming; see `smooth.CausalButterworth`).

    Lost frames pass through unfiltered and restart the filter, so a gap is never smeared into
    made-up motion.
    """

    def __init__(self, cutoff_hz: float = DEFAULT_CUTOFF_HZ, order: int = DEFAULT_ORDER, fps: float = DEFAULT_FPS):
        from mmface4d_stream.smooth import CausalButterworth

        self.filter = CausalButterworth(cutoff_hz=cutoff_hz, order=order, fps=fps)
        self._shape: tuple[int, ...] | None = None

    def process(self, mesh: MeshFrame) -> MeshFrame:
        start = time.perf_counter()
        if mesh.lost or mesh.vertices.size == 0 or not np.isfinite(mesh.vertices).all():
            self.filter.reset()
            self._shape = None
            return mesh
        if self._shape is not None and self._shape != mesh.vertices.shape:
            self.filter.reset()
        self._shape = mesh.vertices.shape
        vertices = np.asarray(self.filter.process(mesh.vertices), dtype=np.float32)
        timings = dict(mesh.timings_ms, smooth=(time.perf_counter() - start) * 1e3)
        return dataclasses.replace(mesh, vertices=vertices, smoothed=True, timings_ms=timings)

    def state(self) -> dict:
        """The filter's state (`CausalButterworth.state`) and frame shape after the last frame (picklable)."""
        return {"filter": self.filter.state(), "shape": self._shape}

    def restore(self, state: dict) -> None:
        """Continue from a `state()` of a `SmoothStage` with the same design."""
        self.filter.restore(state["filter"])
        self._shape = state["shape"]

    def close(self) -> None:
        pass

