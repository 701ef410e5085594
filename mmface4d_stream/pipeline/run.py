"""Reconstruct one sequence in this process: source -> landmarks -> fitter [-> smoother] -> nut files.

This is `mmface4d reconstruct`; the Ray graphs run the same stages as actors.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from mmface4d_stream.errors import InputError
from mmface4d_stream.pipeline.latency_budget import latency_stats
from mmface4d_stream.pipeline.rig_setup import resolve_rig
from mmface4d_stream.pipeline.sinks import output_paths
from mmface4d_stream.pipeline.stage_config import (FitStageConfig, LandmarkStageConfig, OutputConfig, SmoothStageConfig,
                                                   SourceConfig, check_section)

log = logging.getLogger(__name__)


@dataclass
class ReconstructOptions:
    """What `reconstruct` builds: the same typed stage configs as the graph's (`pipeline.stage_config`).

    source: cameras and max_frames (loop and pace are the graph's). fitter: face model, device,
    rig file and reference camera, torch threads. smoother: `enabled` runs the causal filter while
    fitting. output: the mesh files' frame rate. progress: a progress bar on stderr.
    """

    source: SourceConfig = field(default_factory=SourceConfig)
    fitter: FitStageConfig = field(default_factory=FitStageConfig)
    smoother: SmoothStageConfig = field(default_factory=SmoothStageConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    progress: bool = True

    def check(self) -> None:
        """Every section against its allowed values (ConfigError naming the key)."""
        for name in ("source", "fitter", "smoother", "output"):
            check_section(getattr(self, name), name, "reconstruct options")


def check_device(device: str, torch_threads: int | None = None) -> str:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA device is available (use --device cpu)")
    if torch_threads:
        torch.set_num_threads(int(torch_threads))
    return device


def reconstruct(inputs: Sequence[str | os.PathLike], save_path: str | os.PathLike,
                options: ReconstructOptions | None = None) -> dict:
    """Reconstruct a dataset sequence (`<dir>/<name>`) or a set of MKVs into `save_path_{0,1,2}.nut`.

    Returns the meta dict also written to `save_path_meta.json`.
    """
    options = options or ReconstructOptions()
    options.check()
    save_path = str(save_path)
    Path(save_path).parent.mkdir(parents=True, exist_ok=True)
    check_device(options.fitter.device, options.fitter.torch_threads)
    model = options.fitter.load_model()
    source = options.source.open(inputs)
    rig = resolve_rig(source, options.fitter.rig, options.fitter.reference, save_path)
    landmarks = LandmarkStageConfig().build(len(source.camera_indices), color_crops=options.fitter.needs_color)
    fitter = options.fitter.build(rig.transforms, model=model)
    smoother = options.smoother.build(options.output.fps) if options.smoother.enabled else None
    sink = options.output.build(save_path)
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
            "reference_camera": rig.reference,
            "device": options.fitter.device,
            "smoothed": bool(options.smoother.enabled),
            "input_frames": getattr(source, "input_frames", None),
            **fitter.summary(),
            "seconds": round(elapsed, 3),
            "frames_per_second": round(fitter.frames / elapsed, 3) if elapsed > 0 else None,
            "stage_latency_ms": {stage: latency_stats(v) for stage, v in sorted(stage_ms.items())},
        }
        sink.close(faces=fitter.faces, meta=meta, success=success)
    if sink.frames_written == 0:
        raise InputError("no face was found in any frame; nothing reconstructed", Path(str(inputs[0])))
    return meta


__all__ = ["ReconstructOptions", "reconstruct", "output_paths", "check_device"]
