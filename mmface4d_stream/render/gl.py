"""Headless OpenGL shared by the renderer and the id rasterizer (`render.raster_ids`).

- `shared_context()`: the process's one moderngl context (EGL, headless: llvmpipe on the CPU, the
  GPU driver where there is one), created on first use. OpenGL contexts are bound to the thread
  that created them: use it from one thread.
- `LENS_GLSL` and `set_lens_uniforms`: the Kinect lens model (Brown-Conrady rational, k1..k6, p1,
  p2) in GLSL and its uniforms, pinned to `k4a.camera_model.CameraModel` by tests/render.
  Pixels: integer coordinates are pixel centres; camera frame x right, y down, z forward, metres.
- `CLEAR_VERTEX_SHADER`: a full-screen quad, to clear integer render targets (glClear cannot).
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

__all__ = ["shared_context", "LENS_GLSL", "set_lens_uniforms", "CLEAR_VERTEX_SHADER"]


_CONTEXT = None


def shared_context():
    """The process's headless moderngl context (EGL), created on first use."""
    global _CONTEXT
    if _CONTEXT is None:
        import moderngl

        try:
            _CONTEXT = moderngl.create_standalone_context(backend="egl", require=330)
        except Exception as exc:  # moderngl/glcontext raise plain Exceptions for a missing EGL
            raise RuntimeError(
                "headless OpenGL (EGL) is not available; on Debian/Ubuntu install libegl1, libegl-mesa0 "
                f"and libgl1-mesa-dri (Mesa llvmpipe renders on the CPU) ({exc})"
            ) from exc
        logger.debug("OpenGL context: %s, %s", _CONTEXT.info["GL_RENDERER"], _CONTEXT.info["GL_VERSION"])
    return _CONTEXT


# The Kinect lens model and the clip coordinates of a camera-frame point, shared by every shader
# that projects vertices (`render/renderer.py`, `render/raster_ids.py`). Uniforms: intrinsics (fx,
# fy, cx, cy, pixels), k123/k456/p12 (Brown-Conrady rational coefficients), r2_limit (squared
# normalized radius beyond which the radial factor is held), near_far (clip range along z, metres).
LENS_GLSL = """
uniform vec4 intrinsics;      // fx, fy, cx, cy (pixels)
uniform vec3 k123;
uniform vec3 k456;
uniform vec2 p12;
uniform float r2_limit;
uniform vec2 near_far;        // metres

// Camera-frame point (metres, z forward) -> raw (distorted) pixel, centres at integers.
vec2 kinect_pixel(vec3 p) {
    float z = p.z;
    // A vertex at or behind the camera is left to the near-plane clipper (w = z <= near).
    float zs = (abs(z) < 1e-9) ? 1e-9 : z;
    vec2 xy = p.xy / zs;
    float r2 = dot(xy, xy);
    float r2c = min(r2, r2_limit);
    float radial = (1.0 + r2c * (k123.x + r2c * (k123.y + r2c * k123.z)))
                 / (1.0 + r2c * (k456.x + r2c * (k456.y + r2c * k456.z)));
    vec2 d;
    d.x = xy.x * radial + 2.0 * p12.x * xy.x * xy.y + p12.y * (r2 + 2.0 * xy.x * xy.x);
    d.y = xy.y * radial + p12.x * (r2 + 2.0 * xy.y * xy.y) + 2.0 * p12.y * xy.x * xy.y;
    return vec2(d.x * intrinsics.x + intrinsics.z, d.y * intrinsics.y + intrinsics.w);
}

// Normalized device (x, y) of a pixel and the point's z -> clip coordinates (w = z, so that
// varyings are interpolated perspective-correctly and the near plane clips at z = near).
vec4 kinect_clip(vec2 ndc, float z) {
    float n = near_far.x;
    float f = near_far.y;
    float zc = (f + n) / (f - n) * z - 2.0 * f * n / (f - n);
    return vec4(ndc * z, zc, z);
}
"""


def set_lens_uniforms(prog, intrinsics, distortion, r2_limit: float, near: float, far: float) -> None:
    """Set the uniforms of `LENS_GLSL` on a moderngl program.

    intrinsics: (fx, fy, cx, cy) pixels; distortion: (k1..k6, p1, p2) or None (ideal pinhole);
    r2_limit: squared normalized radius beyond which the radial factor is held (use a huge value
    for none); near, far: clip range along z, metres.
    """
    k1, k2, k3, k4, k5, k6, p1, p2 = (float(x) for x in (distortion if distortion is not None else (0.0,) * 8))
    prog["intrinsics"].value = tuple(float(x) for x in intrinsics)
    prog["k123"].value = (k1, k2, k3)
    prog["k456"].value = (k4, k5, k6)
    prog["p12"].value = (p1, p2)
    prog["r2_limit"].value = float(min(r2_limit, 1e30))
    prog["near_far"].value = (float(near), float(far))


# A full-screen quad from gl_VertexID alone (clears integer targets, which glClear cannot).
CLEAR_VERTEX_SHADER = """
#version 330
void main() {
    vec2 corner = vec2(float(gl_VertexID & 1), float(gl_VertexID >> 1)) * 2.0 - 1.0;
    gl_Position = vec4(corner, 1.0, 1.0);
}
"""
