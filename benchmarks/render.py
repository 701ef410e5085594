"""Offscreen rendering speed: a face-sized mesh into Azure-Kinect-like cameras.

Renders the MMFace4D sample's BFM mesh (35709 vertices, 70789 triangles; ../shared/samples) when it
is present, otherwise a procedural ellipsoid cap of 189 x 189 = 35721 vertices, at 0.7 m in front of
a 1920x1080 colour camera and a 640x576 depth camera with Kinect-like lens distortion, and prints a
markdown table of frames per second (colour + uint16 depth read back to numpy each frame). With
--synth it also times `synthesize_capture` (30 frames, 3 cameras, all outputs).

    python benchmarks/render.py [--frames 60] [--synth]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from mmface4d_stream.k4a.synthetic_calibration import synthetic_raw_calibration
from mmface4d_stream.render.gl import shared_context
from mmface4d_stream.render.renderer import MeshRenderer

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "samples" / "mmface4d_000337"

# Typical Azure Kinect lenses (k4a-calib's synthetic device calibration).
_CALIBRATION = synthetic_raw_calibration().calibration("1080P", "NFOV_UNBINNED")
COLOR_1080P = _CALIBRATION.color
DEPTH_NFOV_UNBINNED = _CALIBRATION.depth


def load_mesh() -> tuple[np.ndarray, np.ndarray, str]:
    """(vertices (N, 3) metres camera frame, faces (F, 3), description)."""
    first_last = SAMPLE / "reconstruct_filt_decoded_first_last.npy"
    faces_path = SAMPLE / "bfm_faces.npy"
    if first_last.is_file() and faces_path.is_file():
        v = np.load(first_last)[0].astype(np.float32)
        return v, np.load(faces_path).astype(np.int32), "MMFace4D sample BFM mesh"
    n = 189
    u, w = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n))
    x, y = 0.075 * u, 0.1 * w
    z = 0.72 - 0.06 * np.sqrt(np.clip(1 - u**2 * 0.8 - w**2 * 0.8, 0, None))
    v = np.stack([x.ravel(), y.ravel(), z.ravel()], 1).astype(np.float32)
    idx = np.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    faces = np.concatenate([np.stack([a, b, c], 1), np.stack([b, d, c], 1)]).astype(np.int32)
    return v, faces, "procedural ellipsoid cap"


def measure(renderer: MeshRenderer, frames: list[np.ndarray], **kwargs) -> float:
    """Frames per second over `frames` (after one warm-up frame)."""
    renderer.render(frames[0], **kwargs)
    t0 = time.perf_counter()
    for v in frames:
        renderer.render(v, **kwargs)
    return len(frames) / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--synth", action="store_true", help="also time a 30-frame, 3-camera synthetic capture")
    args = parser.parse_args()

    t0 = time.perf_counter()
    ctx = shared_context()
    t_ctx = time.perf_counter() - t0
    v0, faces, what = load_mesh()
    rng = np.random.default_rng(0)
    # Slightly different vertices every frame, so that nothing is cached between frames.
    frames = [v0 + rng.normal(0, 1e-4, v0.shape).astype(np.float32) for _ in range(args.frames)]
    uv = (v0[:, :2] - v0[:, :2].min(0)) / np.ptp(v0[:, :2], axis=0)
    texture = rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)

    ray_ms = {}
    for cam_name, cam in (("color 1920x1080", COLOR_1080P), ("depth 640x576", DEPTH_NFOV_UNBINNED)):
        t0 = time.perf_counter()
        cam.ray_map()
        ray_ms[cam_name] = (time.perf_counter() - t0) * 1000

    rows = []
    for cam_name, cam in (("color 1920x1080", COLOR_1080P), ("depth 640x576", DEPTH_NFOV_UNBINNED)):
        configs = [
            ("vertex colors, smooth shading", dict(shading="smooth"), {}),
            ("vertex colors, flat shading", dict(shading="flat"), {}),
            ("vertex colors, smooth, + float32 depth", dict(shading="smooth"), dict(return_depth_m=True)),
            ("uv texture, smooth shading", dict(shading="smooth", uv=uv, texture=texture), {}),
        ]
        for label, ctor, call in configs:
            t0 = time.perf_counter()
            r = MeshRenderer(cam, faces, len(v0), **ctor)
            t_setup = time.perf_counter() - t0
            fps = measure(r, frames, **call)
            r.release()
            rows.append((cam_name, label, fps, 1000.0 / fps, t_setup * 1000))

    print(f"Mesh: {what}, {len(v0)} vertices, {len(faces)} triangles; {args.frames} frames per row.")
    print(f"OpenGL: {ctx.info['GL_RENDERER']} ({ctx.info['GL_VERSION']}); context created in {t_ctx * 1000:.0f} ms.")
    print("Per-pixel ray maps (once per camera and process): "
          + ", ".join(f"{k} {v:.0f} ms" for k, v in ray_ms.items()) + ".")
    print()
    print("| camera | configuration | frames/s | ms/frame | renderer setup ms |")
    print("|---|---|---:|---:|---:|")
    for cam_name, label, fps, ms, setup in rows:
        print(f"| {cam_name} | {label} | {fps:.1f} | {ms:.1f} | {setup:.0f} |")
    if args.synth:
        import tempfile

        from mmface4d_stream.render.synth import synthesize_capture

        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            synthesize_capture(tmp, frames=30, cameras=3, seed=0, progress=False)
            elapsed = time.perf_counter() - t0
        print()
        print("| synthetic capture | frames | cameras | seconds | views/s |")
        print("|---|---:|---:|---:|---:|")
        print(f"| MKV + dataset + ground truth | 30 | 3 | {elapsed:.1f} | {90 / elapsed:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
