"""Synthetic multi-Kinect captures of the sample subject, with ground truth.

`synthesize_capture(out_dir, frames, cameras, seed, name)` renders the sample subject
(`render.subject`) performing in front of a backdrop for K Azure-Kinect-like devices and writes

    out_dir/kinect/NAME_i.mkv   Azure Kinect recordings: COLOR MJPG 1080p, DEPTH and IR NFOV
                                unbinned 640x576 in the depth camera's own geometry and lens, the
                                device's calibration.json attached, wired-sync timestamps
    out_dir/NAME_i.mp4          MMFace4D color (H.264, crf 10)
    out_dir/NAME_i.nut          MMFace4D depth: rendered directly in the color camera, i.e. what
                                registration to the color camera produces (Kinect-like noise)
    out_dir/NAME_i.json         color intrinsics, Open3D Azure Kinect layout
    out_dir/NAME.wav            speech-like signal matching the jaw motion, 16 kHz float32
    out_dir/gt/mesh_{0,1,2}.nut ground-truth face vertices per frame (mesh nut triplet), metres,
                                in the reference (device 0) color camera's frame
    out_dir/gt/faces.npy        (F, 3) int32 triangles of the ground-truth face
    out_dir/gt/cameras.json     per device: serial, color/depth intrinsics with lens parameters,
                                T_ref_from_color / T_ref_from_depth (4x4, metres)
    out_dir/gt/calibration_i.json   each device's calibration.json (as attached to its MKV)
    out_dir/gt/performance.npz  per-frame expression parameters and head pose (rotation vector,
                                translation of the head centre in the reference frame)
    out_dir/gt/synth.json       the arguments, written last (marks a complete capture)

Like the released dataset, `NAME_i.json` holds only the pinhole part of the color camera; its
images carry the Kinect lens distortion (`distortion=False` / `--pinhole` renders pinhole cameras),
whose parameters are in `gt/cameras.json` and each device's calibration.

Geometry: the world frame is device 0's color camera (x right, y down, z forward, metres). The
subject's nose tip rests 0.7 m in front of it; devices 1, 2, ... stand on the circle of radius
0.7 m around the nose at yaw +35°, -35° (then ±60°, ...), their color cameras aimed at the nose.
Each device's depth camera sits where its calibration puts it (~32 mm beside the color camera,
tilted ~5°), so depth and color disagree in viewpoint exactly as on a real Kinect.

Depth realism: `render.kinect_sensor` (`DepthNoise`, `kinect_depth`; the IR image `infrared`).
Everything is deterministic for a seed (the noise of each camera and frame has its own seeded
generator); MKV track UIDs are random, so compare decoded content, not file bytes.
"""

from __future__ import annotations

import json
import logging
import math
import os
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mmface4d_stream.audio.speech import speech_audio
from mmface4d_stream.formats.sequence import DATASET_FPS
from mmface4d_stream.geometry import RigidTransform, so3_exp
from mmface4d_stream.k4a.calibration import K4aCalibration
from mmface4d_stream.k4a.raw_calibration import RawCalibration
from mmface4d_stream.k4a.synthetic_calibration import synthetic_raw_calibration
from mmface4d_stream.render.kinect_sensor import DepthNoise, infrared, kinect_depth, surface_cosine
from mmface4d_stream.render.performance import generate_performance
from mmface4d_stream.render.renderer import MeshRenderer
from mmface4d_stream.render.subject import HEAD_CENTRE_BEHIND_NOSE_M, SubjectModel, sample_subject

logger = logging.getLogger(__name__)

__all__ = ["RigDevice", "SynthCapture", "build_rig", "synthesize_capture"]

FPS = DATASET_FPS  # the dataset's (and the Kinects') frame rate
FRAME_PERIOD_USEC = 33_333
COLOR_MODE = "MJPG_1080P"
DEPTH_MODE = "NFOV_UNBINNED"
NOSE_DISTANCE_M = 0.7
SIDE_YAW_DEG = 35.0
SUBORDINATE_DELAY_USEC = 160
FIRST_TIMESTAMP_USEC = 233_000  # devices start streaming a moment after power-up
BACKDROP_Z_M = 1.8
SYNTH_VERSION = 1  # bump when the rendered content changes, so that `reuse` renders again


@dataclass(frozen=True)
class RigDevice:
    """One synthetic Kinect: its calibration and where its color camera stands.

    T_ref_from_color: 4x4 float64, color-camera points -> reference frame (device 0 color), metres.
    """

    index: int
    serial_number: str
    raw_calibration: RawCalibration
    calibration: K4aCalibration
    T_ref_from_color: np.ndarray

    @property
    def T_ref_from_depth(self) -> np.ndarray:
        return self.T_ref_from_color @ self.calibration.T_color_from_depth.as_matrix()


@dataclass(frozen=True)
class SynthCapture:
    """Paths of one synthetic capture (see the module docstring for the layout)."""

    out_dir: Path
    name: str
    n_frames: int
    n_cameras: int
    seed: int
    mkv_paths: tuple[Path, ...]
    color_paths: tuple[Path, ...]
    depth_paths: tuple[Path, ...]
    intrinsics_paths: tuple[Path, ...]
    wav_path: Path
    gt_mesh_prefix: Path
    gt_faces_path: Path
    cameras_path: Path
    calibration_paths: tuple[Path, ...]
    performance_path: Path

    @property
    def sequence_prefix(self) -> Path:
        """`out_dir/NAME`, the dataset sequence (`DatasetSequence(str(prefix))`)."""
        return self.out_dir / self.name


def _look_at_nose(yaw_deg: float, nose: np.ndarray, distance: float) -> np.ndarray:
    """T_ref_from_color of a camera at `distance` from `nose`, rotated by yaw about the vertical."""
    R = so3_exp([0.0, math.radians(yaw_deg), 0.0])
    return RigidTransform(R, nose - R @ np.array([0.0, 0.0, distance])).as_matrix()


def _device_calibration(index: int, serial: str, rng: np.random.Generator, distortion: bool) -> RawCalibration:
    """A plausible per-device calibration: the typical Kinect's, perturbed like unit-to-unit spread."""
    base = synthetic_raw_calibration(serial, distortion=distortion)

    def jitter(cam, focal_rel: float, centre: float, dist_rel: float):
        changes = dict(
            fx=cam.fx * (1 + rng.normal(0, focal_rel)),
            fy=cam.fy * (1 + rng.normal(0, focal_rel)),
            cx=cam.cx + rng.normal(0, centre),
            cy=cam.cy + rng.normal(0, centre),
        )
        if distortion:
            for k in ("k1", "k2", "k3", "k4", "k5", "k6"):
                changes[k] = getattr(cam, k) * (1 + rng.normal(0, dist_rel))
        return replace(cam, **changes)

    tilt = rng.normal(0, math.radians(0.3), 3)
    T = base.color.T_camera_from_depth
    T_new = RigidTransform(so3_exp(tilt) @ T.R, T.t + rng.normal(0, 0.0004, 3))
    depth = jitter(base.depth, 0.003, 0.0015, 0.01)
    color = replace(jitter(base.color, 0.004, 0.002, 0.01), T_camera_from_depth=T_new)
    return replace(base, depth=depth, color=color, factory_cal_date=f"2024-0{1 + index % 9}-1{index % 10}")


def build_rig(n_cameras: int = 3, seed: int = 0, distortion: bool = True) -> list[RigDevice]:
    """The devices of a synthetic session: device 0 in front, then +35°, -35°, +60°, -60°, ...

    Deterministic for (n_cameras, seed).
    """
    if not 1 <= n_cameras <= 7:
        raise ValueError(f"cameras must be 1..7, got {n_cameras}")
    rng = np.random.default_rng([seed, 271828])
    nose = np.array([0.0, 0.0, NOSE_DISTANCE_M])
    yaws = [0.0]
    for k in range(1, n_cameras):
        step = (k + 1) // 2
        yaws.append((SIDE_YAW_DEG if step == 1 else SIDE_YAW_DEG + 25.0 * (step - 1)) * (1 if k % 2 else -1))
    devices = []
    for i, yaw in enumerate(yaws):
        serial = f"{int(rng.integers(10**11, 10**12 - 1)):012d}"
        raw = _device_calibration(i, serial, rng, distortion)
        calibration = raw.calibration(COLOR_MODE, DEPTH_MODE)
        devices.append(RigDevice(i, serial, raw, calibration, _look_at_nose(yaw, nose, NOSE_DISTANCE_M)))
    return devices


def _backdrop(n_u: int = 60, n_v: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """A 6 m x 4 m wall at z = BACKDROP_Z_M in the reference frame, finely tessellated so that its
    coverage follows the lens distortion: (vertices (N, 3), faces (F, 3))."""
    xs, ys = np.meshgrid(np.linspace(-3.0, 3.0, n_u), np.linspace(-2.0, 2.0, n_v))
    v = np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, BACKDROP_Z_M)], 1)
    idx = np.arange(n_u * n_v).reshape(n_v, n_u)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    return v, np.concatenate([np.stack([a, c, b], 1), np.stack([b, c, d], 1)])


def _camera_json(device: RigDevice) -> dict:
    def model(m) -> dict:
        return dict(width=m.width, height=m.height, fx=m.fx, fy=m.fy, cx=m.cx, cy=m.cy,
                    k1=m.k1, k2=m.k2, k3=m.k3, k4=m.k4, k5=m.k5, k6=m.k6, p1=m.p1, p2=m.p2,
                    metric_radius=m.metric_radius, model_type=m.model_type)

    c = device.calibration
    return {
        "index": device.index,
        "serial_number": device.serial_number,
        "color": model(c.color),
        "depth": model(c.depth),
        "T_ref_from_color": device.T_ref_from_color.tolist(),
        "T_ref_from_depth": device.T_ref_from_depth.tolist(),
        "T_color_from_depth": c.T_color_from_depth.as_matrix().tolist(),
    }


def _scene_mesh(subject: SubjectModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Faces, uv and rest vertices of subject + backdrop (the backdrop uses the texture's flat
    'backdrop' colour)."""
    wall_v, wall_f = _backdrop()
    faces = np.concatenate([subject.faces, wall_f + subject.n_vertices]).astype(np.int32)
    uv = np.concatenate([subject.uv, np.tile(subject.band_uv("backdrop"), (len(wall_v), 1))]).astype(np.float32)
    return faces, uv, wall_v.astype(np.float32)


def synthesize_capture(
    out_dir: str | os.PathLike,
    frames: int = 60,
    cameras: int = 3,
    seed: int = 0,
    name: str = "synth",
    *,
    noise: DepthNoise = DepthNoise(),
    distortion: bool = True,
    write_mkv: bool = True,
    write_dataset: bool = True,
    progress: bool = True,
    reuse: bool = False,
) -> SynthCapture:
    """Render a synthetic session and write MKVs, dataset files and ground truth (see module doc).

    Args:
        out_dir: output folder (created).
        frames: number of 30 fps frames.
        cameras: number of devices (1..7).
        seed: everything random derives from it.
        name: sequence name (file prefix).
        noise: depth degradation; `DepthNoise(enabled=False)` writes exact (quantized) depth.
        distortion: Kinect lens distortion (False: pinhole cameras).
        write_mkv / write_dataset: skip one family of outputs (ground truth is always written).
        progress: tqdm progress bar on stderr.
        reuse: when `out_dir` already holds a complete capture made with the same arguments
            (`gt/synth.json`, written last), return it without rendering again.
    Returns:
        `SynthCapture` with the paths written.
    """
    from tqdm import tqdm

    from mmface4d_stream.formats.audio import DATASET_RATE_HZ, write_wav
    from mmface4d_stream.formats.color_mp4 import ColorMp4Writer
    from mmface4d_stream.formats.depth_nut import DepthNutWriter
    from mmface4d_stream.formats.intrinsics import IntrinsicsJson
    from mmface4d_stream.formats.mesh_nut import MeshNutWriter
    from mmface4d_stream.k4a.mkv_writer import MkvWriter

    if frames < 1:
        raise ValueError(f"frames must be at least 1, got {frames}")
    if not name or any(ch in name for ch in "/\\") or name.startswith("."):
        raise ValueError(f"name must be a plain file name prefix, got {name!r}")
    out = Path(out_dir)
    gt = out / "gt"
    gt.mkdir(parents=True, exist_ok=True)
    if write_mkv:
        (out / "kinect").mkdir(exist_ok=True)

    capture = SynthCapture(
        out_dir=out, name=name, n_frames=frames, n_cameras=cameras, seed=seed,
        mkv_paths=tuple(out / "kinect" / f"{name}_{i}.mkv" for i in range(cameras)) if write_mkv else (),
        color_paths=tuple(out / f"{name}_{i}.mp4" for i in range(cameras)) if write_dataset else (),
        depth_paths=tuple(out / f"{name}_{i}.nut" for i in range(cameras)) if write_dataset else (),
        intrinsics_paths=tuple(out / f"{name}_{i}.json" for i in range(cameras)) if write_dataset else (),
        wav_path=out / f"{name}.wav",
        gt_mesh_prefix=gt / "mesh",
        gt_faces_path=gt / "faces.npy",
        cameras_path=gt / "cameras.json",
        calibration_paths=tuple(gt / f"calibration_{i}.json" for i in range(cameras)),
        performance_path=gt / "performance.npz",
    )
    manifest_path = gt / "synth.json"
    manifest = {
        "version": SYNTH_VERSION, "frames": frames, "cameras": cameras, "seed": seed, "name": name,
        "noise": [noise.enabled, noise.sigma_m, noise.sigma_ref_z_m, list(noise.grazing_deg), noise.edge_jump_m,
                  noise.edge_drop_p, noise.flying_p],
        "distortion": distortion, "write_mkv": write_mkv, "write_dataset": write_dataset,
    }
    if reuse and manifest_path.is_file():
        try:
            same = json.loads(manifest_path.read_text()) == manifest
        except (OSError, ValueError):
            same = False
        if same and all(p.is_file() for p in _all_paths(capture)):
            logger.info("reusing the synthetic capture in %s (same parameters)", out)
            return capture
    manifest_path.unlink(missing_ok=True)

    subject = sample_subject(2)
    performance = generate_performance(frames, seed=seed, fps=FPS)
    devices = build_rig(cameras, seed=seed, distortion=distortion)
    faces, uv, wall = _scene_mesh(subject)
    n_scene = subject.n_vertices + len(wall)

    # Static ground truth first: topology, cameras, calibrations, performance, audio.
    np.save(capture.gt_faces_path, subject.face_faces.astype(np.int32))
    for device, path in zip(devices, capture.calibration_paths):
        path.write_bytes(device.raw_calibration.to_json())
    head_centre = np.array([0.0, 0.0, NOSE_DISTANCE_M + HEAD_CENTRE_BEHIND_NOSE_M])
    capture.cameras_path.write_text(json.dumps({
        "reference": "device 0 color camera (x right, y down, z forward), metres",
        "fps": FPS,
        "frame_period_usec": FRAME_PERIOD_USEC,
        "head_centre_rest": head_centre.tolist(),
        "n_face_vertices": subject.n_face_vertices,
        "mediapipe_vertex_ids": "vertices 0..467 of the ground-truth mesh are MediaPipe FaceMesh points 0..467",
        "devices": [_camera_json(d) for d in devices],
    }, indent=2))
    np.savez(capture.performance_path, jaw=performance.jaw, pucker=performance.pucker, smile=performance.smile,
             blink=performance.blink, brow=performance.brow, rotation=performance.rotation,
             translation=performance.translation + head_centre, fps=FPS, seed=seed)
    audio = speech_audio(performance, DATASET_RATE_HZ)
    write_wav(capture.wav_path, audio, DATASET_RATE_HZ)

    with ExitStack() as stack:
        color_renderers, depth_renderers = [], []
        for device in devices:
            c = device.calibration
            color_renderers.append(stack.enter_context(MeshRenderer(
                c.color, faces, n_scene, uv=uv, texture=subject.texture, ambient=0.55)))
            depth_renderers.append(stack.enter_context(MeshRenderer(
                c.depth, faces, n_scene, uv=uv, texture=subject.texture, shading="none")))
        mesh_writer = stack.enter_context(MeshNutWriter(capture.gt_mesh_prefix, fps=FPS, atomic=True))
        mkv_writers, mp4_writers, nut_writers = [], [], []
        for i, device in enumerate(devices):
            if write_mkv:
                mkv_writers.append(stack.enter_context(MkvWriter(
                    capture.mkv_paths[i], calibration_raw=device.raw_calibration.to_json(),
                    color_mode=COLOR_MODE, depth_mode=DEPTH_MODE, ir=True, fps=FPS,
                    serial_number=device.serial_number,
                    wired_sync_mode="STANDALONE" if cameras == 1 else ("MASTER" if i == 0 else "SUBORDINATE"),
                    subordinate_delay_usec=0 if i == 0 else SUBORDINATE_DELAY_USEC * i,
                    atomic=True)))
            if write_dataset:
                w, h = device.calibration.color.size
                mp4_writers.append(stack.enter_context(ColorMp4Writer(capture.color_paths[i], w, h, fps=FPS, crf=10, atomic=True)))
                nut_writers.append(stack.enter_context(DepthNutWriter(capture.depth_paths[i], w, h, fps=FPS, atomic=True)))
        color_rays = [d.calibration.color.ray_map() for d in devices]
        depth_rays = [d.calibration.depth.ray_map() for d in devices]
        T_color_from_ref = [np.linalg.inv(d.T_ref_from_color) for d in devices]
        T_depth_from_ref = [np.linalg.inv(d.T_ref_from_depth) for d in devices]

        def emit(i: int, f: int, rgb: np.ndarray, color_depth_m: np.ndarray, depth_depth_m) -> None:
            # Runs on camera i's worker thread: noise and encoding (numpy and the codecs release the
            # GIL) overlap with rendering the next view on the main thread, which owns OpenGL.
            rng = np.random.default_rng([seed, i, f])
            if write_dataset:
                mp4_writers[i].write(rgb)
                nut_writers[i].write(kinect_depth(color_depth_m, color_rays[i], rng, noise))
            if write_mkv:
                # One incidence map for both (step 1, as `kinect_depth` uses below 1000 px wide).
                cos = surface_cosine(np.asarray(depth_depth_m, dtype=np.float32), depth_rays[i])
                depth_mm = kinect_depth(depth_depth_m, depth_rays[i], rng, noise, cos=cos)
                ir = infrared(depth_depth_m, depth_rays[i], rng, cos=cos)
                stamp = FIRST_TIMESTAMP_USEC + f * FRAME_PERIOD_USEC + SUBORDINATE_DELAY_USEC * i
                mkv_writers[i].write(stamp, color=rgb, depth=depth_mm, ir=ir)

        workers = [stack.enter_context(ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"synth-cam{i}"))
                   for i in range(cameras)]
        pending: list[Future | None] = [None] * cameras
        bar = stack.enter_context(tqdm(total=frames * cameras, desc=f"synth {name}", unit="view",
                                       disable=not progress, leave=False))
        for f in range(frames):
            R = so3_exp(performance.rotation[f])
            t = head_centre + performance.translation[f]
            vertices = subject.vertices(performance.expression(f), rotation=R, translation=t)
            mesh_writer.write(vertices[: subject.n_face_vertices])
            scene = np.concatenate([vertices, wall])
            for i in range(cameras):
                col = color_renderers[i].render(scene, T_cam_from_world=T_color_from_ref[i], return_depth_m=True)
                dep = None
                if write_mkv:
                    dep = depth_renderers[i].render(scene, T_cam_from_world=T_depth_from_ref[i], return_depth_m=True)
                if pending[i] is not None:
                    pending[i].result()  # one view in flight per camera bounds memory; re-raises errors
                    bar.update(1)
                pending[i] = workers[i].submit(emit, i, f, col.color, col.depth_m, None if dep is None else dep.depth_m)
        for i in range(cameras):
            if pending[i] is not None:
                pending[i].result()
                bar.update(1)

    if write_dataset:
        for i, device in enumerate(devices):
            m = device.calibration.color
            IntrinsicsJson(fx=m.fx, fy=m.fy, cx=m.cx, cy=m.cy, width=m.width, height=m.height,
                           color_mode=COLOR_MODE, depth_mode=DEPTH_MODE, serial_number=device.serial_number,
                           stream_length_usec=frames * FRAME_PERIOD_USEC).save(capture.intrinsics_paths[i])
    # Written last: its presence marks a complete capture that `reuse` may return as is.
    manifest_path.write_text(json.dumps(manifest, indent=2))
    logger.info("synthetic capture %s: %d frames x %d cameras in %s", name, frames, cameras, out)
    return capture


def _all_paths(capture: SynthCapture) -> list[Path]:
    from mmface4d_stream.formats.mesh_nut import mesh_nut_paths

    return [
        *capture.mkv_paths, *capture.color_paths, *capture.depth_paths, *capture.intrinsics_paths,
        capture.wav_path, *mesh_nut_paths(capture.gt_mesh_prefix), capture.gt_faces_path, capture.cameras_path,
        *capture.calibration_paths, capture.performance_path,
    ]
