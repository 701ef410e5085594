"""Reconstruct one sequence in this process: source -> landmarks -> fitter [-> smoother] -> nut files.

This is `mmface4d reconstruct`; the Ray graphs run the same stages as actors.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from mmface4d_stream.errors import InputError
from mmface4d_stream.pipeline.sinks import MeshNutSink, output_paths
from mmface4d_stream.pipeline.sources import open_source
from mmface4d_stream.pipeline.stages import FitStage, LandmarkStage, SmoothStage, calibrate_rig

log = logging.getLogger(__name__)


@dataclass
class ReconstructOptions:
    """What `reconstruct` builds. face_model: "template" (built-in, no licensed file) or "bfm"."""

    cameras: Sequence[int] | None = None
    face_model: str = "template"
    bfm_folder: str | None = None
    landmark_mapping: str | None = None
    device: str = "cpu"
    rig_path: str | None = None
    reference: int | None = None
    smooth: bool = False
    max_frames: int | None = None
    progress: bool = True
    # The fitter is many small tensor ops: one thread is fastest on a CPU shared with the decoders.
    torch_threads: int = 1
    # The fitter's rasterized depth term (`FitterConfig.raster`): "off" or "depth".
    raster: str = "off"


def load_face_model(options: ReconstructOptions):
    """None for the template (the fitter builds it from the first good frame), else the user's BFM."""
    if options.face_model == "template":
        return None
    if options.face_model == "bfm":
        if not options.bfm_folder:
            raise InputError("--face-model bfm needs --bfm-folder (the BFM is licensed per user)")
        from mmface4d_stream.face.models import BfmModel

        return BfmModel.load(options.bfm_folder, options.landmark_mapping)
    raise InputError(f"unknown face model {options.face_model!r} (template or bfm)")


def check_device(device: str, torch_threads: int | None = None) -> str:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA device is available (use --device cpu)")
    if torch_threads:
        torch.set_num_threads(int(torch_threads))
    return device


def rig_transforms_for(source, options: ReconstructOptions, save_path: str):
    """Per-camera T_ref_from_cam: identity for one camera, else from --rig or calibrated now."""
    from mmface4d_stream.fit.rig import RigCalibration

    if len(source.camera_indices) == 1:
        return None, None
    if options.rig_path:
        rig = RigCalibration.load(options.rig_path)
    else:
        log.info("calibrating the rig from the first frames of %s", source.name)
        rig = calibrate_rig(source, reference=options.reference)
        rig.save(f"{save_path}_rig.json")
    return rig.transforms_for(source.serials, options.rig_path), rig


def reconstruct(inputs: Sequence[str | os.PathLike], save_path: str | os.PathLike,
                options: ReconstructOptions | None = None) -> dict:
    """Reconstruct a dataset sequence (`<dir>/<name>`) or a set of MKVs into `save_path_{0,1,2}.nut`.

    Returns the meta dict also written to `save_path_meta.json`.
    """
    options = options or ReconstructOptions()
    save_path = str(save_path)
    Path(save_path).parent.mkdir(parents=True, exist_ok=True)
    check_device(options.device, options.torch_threads)
    model = load_face_model(options)
    source = open_source(inputs, cameras=options.cameras, max_frames=options.max_frames)
    transforms, rig = rig_transforms_for(source, options, save_path)
    landmarks = LandmarkStage(len(source.camera_indices))
    from mmface4d_stream.fit.fitter_config import FitterConfig

    fitter = FitStage(transforms, model=model, config=FitterConfig(raster=options.raster), device=options.device)
    smoother = SmoothStage() if options.smooth else None
    sink = MeshNutSink(save_path)
    start = time.perf_counter()
    success = False
    stage_ms: dict[str, list[float]] = {}
    try:
        with tqdm(total=len(source), desc=f"reconstruct {source.name}", unit="frame", file=sys.stderr,
                  disable=not options.progress, dynamic_ncols=True) as bar:
            frames = iter(source)
            while True:
                t0 = time.perf_counter()
                frame_set = next(frames, None)
                if frame_set is None:
                    break
                stage_ms.setdefault("source", []).append((time.perf_counter() - t0) * 1e3)
                mesh = fitter.process(landmarks.process(frame_set))
                if smoother is not None:
                    mesh = smoother.process(mesh)
                t0 = time.perf_counter()
                sink.process(mesh)
                stage_ms.setdefault("encode", []).append((time.perf_counter() - t0) * 1e3)
                for stage, ms in mesh.timings_ms.items():
                    stage_ms.setdefault(stage, []).append(ms)
                bar.update()
        # Nothing fitted is not a finished reconstruction: no meta json, so a re-run tries again.
        success = sink.frames_written > 0
    finally:
        landmarks.close()
        elapsed = time.perf_counter() - start
        meta = {
            "source": [str(p) for p in inputs],
            "cameras": [{"index": i, "serial": s} for i, s in zip(source.camera_indices, source.serials)],
            "reference_camera": None if rig is None else rig.reference,
            "device": options.device,
            "smoothed": bool(options.smooth),
            "input_frames": getattr(source, "input_frames", None),
            **fitter.summary(),
            "seconds": round(elapsed, 3),
            "frames_per_second": round(fitter.frames / elapsed, 3) if elapsed > 0 else None,
            "stage_ms": {stage: {"mean": round(float(np.mean(v)), 3), "p50": round(float(np.percentile(v, 50)), 3),
                                 "p95": round(float(np.percentile(v, 95)), 3)} for stage, v in stage_ms.items()},
        }
        sink.close(faces=fitter.faces, meta=meta, success=success)
    if sink.frames_written == 0:
        raise InputError("no face was found in any frame; nothing reconstructed", Path(str(inputs[0])))
    return meta


__all__ = ["ReconstructOptions", "reconstruct", "output_paths"]
