"""How a sequence's cameras are put in one frame: the one policy `reconstruct`, the graph and
`mmface4d calibrate` share.

`calibrate_rig` solves the extrinsics from the first frame sets where every camera sees the face;
`resolve_rig` decides where a sequence's rig comes from (one camera: identity; a rig file; else
calibrated now and saved beside the outputs).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from mmface4d_stream.errors import InputError

log = logging.getLogger(__name__)


def calibrate_rig(source, landmark_config=None, frames: int = 5, max_frames: int = 150,
                  reference: int | None = None, calibrator_config=None,
                  on_good_frame: Callable[[int], None] | None = None, hint: str = " (give --rig rig.json)"):
    """Solve the rig's extrinsics from the first frames where every camera sees the face.

    source: an iterable of `FrameSet` with `intrinsics` and `serials` (a `pipeline.sources` source).
    Runs a `FaceLandmarker` per camera over at most `max_frames` frame sets, keeping `frames` good
    ones (`on_good_frame(count)` after each); depth is registered to colour where the source gives
    it raw. calibrator_config: a `fit.rig.RigCalibratorConfig` (None: defaults). Returns a
    `fit.rig.RigCalibration`; no good frame at all is an `InputError` (`hint` ends its message).
    """
    from mmface4d_stream.face.landmarks import FaceLandmarker
    from mmface4d_stream.fit.rig import RigCalibrator
    from mmface4d_stream.pipeline.sources import DepthRegistrations

    calibrator = RigCalibrator(source.intrinsics, source.serials, reference=reference, config=calibrator_config)
    landmarkers = [FaceLandmarker(landmark_config) for _ in source.intrinsics]
    registrations = DepthRegistrations()
    try:
        for count, frame_set in enumerate(source):
            if count >= max_frames or calibrator.n_frames >= frames:
                break
            if any(c is None or (c.depth_mm is None and c.depth_raw is None) for c in frame_set.cameras):
                continue
            depths = [registrations.full(c) for c in frame_set.cameras]
            for camera, depth in zip(frame_set.cameras, depths):
                if camera.rgb.shape[:2] != depth.shape:
                    raise InputError(f"camera {camera.camera}: colour {camera.rgb.shape[1]}x{camera.rgb.shape[0]} and "
                                     f"depth {depth.shape[1]}x{depth.shape[0]} sizes differ (depth must be registered "
                                     "to colour)", frame_set.seq, frame_set.frame)
            results = [lm.process(c.rgb, d) for lm, c, d in zip(landmarkers, frame_set.cameras, depths)]
            if calibrator.add_frame([r.points_px if r.found else None for r in results], depths, frame_set.frame):
                if on_good_frame is not None:
                    on_good_frame(calibrator.n_frames)
            else:
                log.debug("frame %d: face found in cameras %s", frame_set.frame, [r.found for r in results])
    finally:
        for landmarker in landmarkers:
            landmarker.close()
    if calibrator.n_frames == 0:
        raise InputError(f"the face was never found with depth in every camera at once (searched the first "
                         f"{max_frames} frames); cannot calibrate the rig{hint}")
    if calibrator.n_frames < frames:
        log.warning("only %d good frames for the rig calibration (asked for %d)", calibrator.n_frames, frames)
    return calibrator.solve()


@dataclass
class RigSetup:
    """A sequence's rig. transforms: per camera (in the source's order) the 4x4 T_ref_from_cam,
    None for one camera (identity). calibration: the `fit.rig.RigCalibration` (None: one camera).
    how: "one camera", "file" or "calibrated"; seconds: the calibration's time (None unless calibrated)."""

    transforms: list[np.ndarray] | None
    calibration: object | None
    how: str
    seconds: float | None = None

    @property
    def reference(self) -> int | None:
        """The reference camera's position (None: one camera)."""
        return None if self.calibration is None else self.calibration.reference

    def info(self) -> dict:
        """{"rig": how, "seconds": ...} for the start-up figures of a meta json."""
        return {"rig": self.how, "seconds": self.seconds}


def resolve_rig(source, rig_path: str | None = None, reference: int | None = None,
                save_path: str | None = None) -> RigSetup:
    """The rig of `source`: identity for one camera, else the rig file `rig_path`, else calibrated on
    the first frames (`calibrate_rig`, reference camera `reference`) and saved to `save_path_rig.json`."""
    from mmface4d_stream.fit.rig import RigCalibration

    if len(source.camera_indices) == 1:
        return RigSetup(None, None, "one camera")
    if rig_path:
        rig = RigCalibration.load(rig_path)
        how, seconds = "file", None
    else:
        log.info("calibrating the rig from the first frames of %s", source.name)
        start = time.perf_counter()
        rig = calibrate_rig(source, reference=reference)
        how, seconds = "calibrated", round(time.perf_counter() - start, 3)
        if save_path:
            rig.save(f"{save_path}_rig.json")
    transforms = [np.asarray(t, np.float64) for t in rig.transforms_for(source.serials, rig_path)]
    return RigSetup(transforms, rig, how, seconds)


__all__ = ["calibrate_rig", "RigSetup", "resolve_rig"]
