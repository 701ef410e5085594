"""Offscreen OpenGL rendering of a triangle mesh into a (distorted) Kinect-like camera.

`MeshRenderer` draws a mesh with per-vertex colors or a uv texture, Lambert-shaded by a light at the
camera, and returns what a camera would see: RGB (uint8 (H, W, 3)) and metric depth (uint16 (H, W)
millimetres, 0 where no surface; optionally float32 metres). Depth is z along the optical axis, the
quantity the Azure Kinect reports, not the distance along the ray.

How distortion is handled (the choice this module makes):
- Coverage: each vertex is projected with the full lens model (pinhole plus the Kinect's
  Brown-Conrady rational distortion, k1..k6, p1, p2) in the vertex shader, and triangles are
  rasterized with straight edges between the distorted vertices. For a finely tessellated mesh
  (a face mesh, edges of a few pixels) the difference from truly curved edges is far below a pixel.
- Depth: every fragment looks up the exact undistorted ray of its pixel (a per-camera texture built
  once from the camera's unprojection, `CameraModel.ray_map`) and intersects it with its triangle's plane
  (spanned by the screen derivatives of the interpolated camera-space position). Depth is therefore
  exact for planar triangles whatever the distortion, not an interpolation in distorted image
  space (measured: < 0.001 mm on tilted planes through Kinect lenses).
- Pixels outside the lens model's valid radius stay empty, as on the Kinect.
Rendering undistorted and remapping would cost an extra full-frame pass, a larger intermediate image
and a resampling error at every depth edge; projecting vertices avoids all three. Large triangles
(a few-vertex wall) should be tessellated so that their straight distorted edges stay accurate.

Speed: `benchmarks/render.py`; the README's "Measured" section keeps the figures.

Pixel convention: integer pixel coordinates are pixel centres (OpenCV / Kinect SDK); the image's first
row is the top (v = 0), so arrays come back without flipping.

One OpenGL context per process (`render.gl.shared_context`: EGL, headless; llvmpipe on the CPU,
the GPU driver where there is one) is shared by all renderers; the lens model's GLSL is
`render.gl.LENS_GLSL`, vertex normals `render.mesh_ops.vertex_normals`. Framebuffers and buffers
are allocated once per renderer and reused across frames. OpenGL contexts are bound to the thread
that created them: use renderers from one thread.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np

from mmface4d_stream.k4a.camera_model import BROWN_CONRADY, CameraModel
from mmface4d_stream.render.gl import CLEAR_VERTEX_SHADER, LENS_GLSL, set_lens_uniforms, shared_context
from mmface4d_stream.render.mesh_ops import face_incidence, vertex_normals

logger = logging.getLogger(__name__)

__all__ = ["RenderResult", "MeshRenderer"]


def _check_camera(camera: CameraModel) -> CameraModel:
    if not isinstance(camera, CameraModel):
        raise ValueError(
            f"camera must be a mmface4d_stream.k4a.camera_model.CameraModel, got {type(camera).__name__}"
        )
    if camera.model_type != BROWN_CONRADY or camera.codx != 0.0 or camera.cody != 0.0:
        raise ValueError(
            "the renderer draws the Brown-Conrady lens model with its centre at the principal point "
            f"(codx = cody = 0); got {camera.model_type} with codx={camera.codx}, cody={camera.cody}"
        )
    return camera


class RenderResult(NamedTuple):
    """One rendered view.

    color: uint8 (H, W, 3) RGB. depth_mm: uint16 (H, W), z along the optical axis in millimetres,
    0 where no surface. depth_m: float32 (H, W) metres, 0 where no surface, or None unless asked for.
    """

    color: np.ndarray
    depth_mm: np.ndarray
    depth_m: np.ndarray | None


_VERTEX_SHADER = """
#version 330
uniform mat4 T_cam_from_world;
uniform vec2 image_size;      // W, H
""" + LENS_GLSL + """
in vec3 in_position;
in vec3 in_normal;
#ifdef TEXTURED
in vec2 in_uv;
out vec2 v_uv;
#else
in vec3 in_color;
out vec3 v_color;
#endif
out vec3 v_pos;
out vec3 v_normal;

void main() {
    vec4 p = T_cam_from_world * vec4(in_position, 1.0);
    v_pos = p.xyz;
    v_normal = mat3(T_cam_from_world) * in_normal;
#ifdef TEXTURED
    v_uv = in_uv;
#else
    v_color = in_color;
#endif
    vec2 uv = kinect_pixel(p.xyz);
    // Pixel centre u maps to window x = u + 0.5; rows are not flipped, so row 0 is read first.
    vec2 ndc = (uv + 0.5) / image_size * 2.0 - 1.0;
    gl_Position = kinect_clip(ndc, p.z);
}
"""

_FRAGMENT_SHADER = """
#version 330
uniform sampler2D ray_map;    // per-pixel normalized undistorted (x, y)
uniform float ambient;
uniform float shade;          // 0: unlit, 1: Lambert with a light at the camera
#ifdef TEXTURED
uniform sampler2D albedo;
in vec2 v_uv;
#else
in vec3 v_color;
#endif
in vec3 v_pos;
in vec3 v_normal;
layout(location = 0) out vec4 out_color;
layout(location = 1) out uint out_depth_mm;
layout(location = 2) out float out_depth_m;

void main() {
    // v_pos is an affine combination of the triangle's vertices, so it lies on the triangle's
    // plane, and its screen derivatives (helper pixels included) span that plane.
    vec3 face_n = cross(dFdx(v_pos), dFdy(v_pos));
    vec2 ray_xy = texelFetch(ray_map, ivec2(gl_FragCoord.xy), 0).xy;
    if (isnan(ray_xy.x)) {
        discard;  // outside the lens model's valid field: no measurement
    }
    vec3 ray = vec3(ray_xy, 1.0);
    float denom = dot(face_n, ray);
    float z = v_pos.z;
    // Exact z where the pixel's undistorted ray meets the plane; v_pos itself sits on the ray of
    // the pixel's distorted-space barycentrics, which differs by the linearization of the lens.
    if (abs(denom) > 1e-3 * length(face_n)) {
        float z_plane = dot(face_n, v_pos) / denom;
        // Grazing triangles: trust the plane only near the interpolated point.
        z = clamp(z_plane, v_pos.z * 0.98, v_pos.z * 1.02);
    }
#ifdef TEXTURED
    vec3 base = texture(albedo, v_uv).rgb;
#else
    vec3 base = v_color;
#endif
#ifdef FLAT
    vec3 nrm = normalize(face_n);
#else
    vec3 nrm = normalize(v_normal);
#endif
    vec3 to_light = normalize(-v_pos);
    float lambert = abs(dot(nrm, to_light));
    float light = mix(1.0, ambient + (1.0 - ambient) * lambert, shade);
    out_color = vec4(clamp(base * light, 0.0, 1.0), 1.0);
    out_depth_mm = uint(clamp(z * 1000.0 + 0.5, 0.0, 65535.0));
    out_depth_m = z;
}
"""


_CLEAR_FRAGMENT_SHADER = """
#version 330
uniform vec3 background;
layout(location = 0) out vec4 out_color;
layout(location = 1) out uint out_depth_mm;
layout(location = 2) out float out_depth_m;
void main() {
    out_color = vec4(background, 1.0);
    out_depth_mm = 0u;
    out_depth_m = 0.0;
}
"""


class MeshRenderer:
    """Renders one mesh topology into one camera, frame after frame.

    Args:
        camera: `mmface4d_stream.k4a.camera_model.CameraModel` (pixel intrinsics, Brown-Conrady lens).
        faces: (F, 3) int triangle vertex indices (fixed for the renderer's life).
        n_vertices: N, the number of vertices of every frame.
        colors: (N, 3) per-vertex RGB, uint8 or float in [0, 1]; used when no texture is given.
            None and no texture: light grey.
        uv: (N, 2) float texture coordinates (u right, v up, OpenGL convention), with `texture`.
        texture: (h, w, 3) uint8 RGB image, row 0 = top (v = 1).
        shading: "smooth" (per-vertex normals, computed per frame unless given), "flat"
            (per-triangle normals, no CPU work) or "none" (unlit colors / texture).
        ambient: fraction of light that does not depend on the surface orientation, in [0, 1].
        background: RGB uint8 of pixels without a surface.
        near, far: clip range along z, metres.
    """

    def __init__(
        self,
        camera,
        faces: np.ndarray,
        n_vertices: int,
        colors: np.ndarray | None = None,
        uv: np.ndarray | None = None,
        texture: np.ndarray | None = None,
        shading: str = "smooth",
        ambient: float = 0.35,
        background: tuple[int, int, int] = (0, 0, 0),
        near: float = 0.05,
        far: float = 20.0,
    ):
        camera = _check_camera(camera)
        faces = np.asarray(faces)
        if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
            raise ValueError(f"faces must be a non-empty (F, 3) integer array, got shape {faces.shape}")
        if not np.issubdtype(faces.dtype, np.integer):
            raise ValueError(f"faces must hold integers, got {faces.dtype}")
        n_vertices = int(n_vertices)
        if faces.min() < 0 or faces.max() >= n_vertices:
            raise ValueError(f"faces index vertices outside [0, {n_vertices})")
        if shading not in ("smooth", "flat", "none"):
            raise ValueError(f"shading must be 'smooth', 'flat' or 'none', got {shading!r}")
        if not 0.0 <= ambient <= 1.0:
            raise ValueError(f"ambient must be in [0, 1], got {ambient}")
        if not 0 < near < far:
            raise ValueError(f"need 0 < near < far, got near={near}, far={far}")
        textured = texture is not None
        if textured:
            if uv is None:
                raise ValueError("a texture needs per-vertex uv coordinates")
            uv = np.asarray(uv, dtype=np.float32)
            if uv.shape != (n_vertices, 2):
                raise ValueError(f"uv must be ({n_vertices}, 2), got {uv.shape}")
            texture = np.asarray(texture)
            if texture.ndim != 3 or texture.shape[2] != 3 or texture.dtype != np.uint8:
                raise ValueError(f"texture must be uint8 (h, w, 3), got {texture.dtype} {texture.shape}")
        else:
            if colors is None:
                colors = np.full((n_vertices, 3), 0.8, dtype=np.float32)
            colors = np.asarray(colors)
            if colors.shape != (n_vertices, 3):
                raise ValueError(f"colors must be ({n_vertices}, 3), got {colors.shape}")
            colors = colors.astype(np.float32) / 255.0 if colors.dtype == np.uint8 else colors.astype(np.float32)

        self.camera = camera
        self.faces = faces.astype(np.int32)
        self.n_vertices = n_vertices
        self.shading = shading
        self.background = tuple(int(c) for c in background)
        self._near, self._far = float(near), float(far)
        W, H = camera.width, camera.height

        ctx = shared_context()
        self._ctx = ctx
        defines = "".join(
            f"#define {name}\n" for name, on in (("TEXTURED", textured), ("FLAT", shading == "flat")) if on
        )

        def with_defines(src: str) -> str:
            head, rest = src.split("\n", 2)[1], src.split("\n", 2)[2]
            return head + "\n" + defines + rest

        self._prog = ctx.program(
            vertex_shader=with_defines(_VERTEX_SHADER),
            fragment_shader=with_defines(_FRAGMENT_SHADER),
        )
        self._set_camera_uniforms()
        self._prog["ambient"].value = float(ambient)
        self._prog["shade"].value = 0.0 if shading == "none" else 1.0

        self._pos_buf = ctx.buffer(reserve=n_vertices * 12, dynamic=True)
        self._nrm_buf = ctx.buffer(reserve=n_vertices * 12, dynamic=True)
        self._nrm_buf.write(np.tile(np.float32([0, 0, -1]), (n_vertices, 1)).tobytes())
        self._idx_buf = ctx.buffer(self.faces.tobytes())
        content = [(self._pos_buf, "3f", "in_position")]
        if "in_normal" in self._prog:
            content.append((self._nrm_buf, "3f", "in_normal"))
        self._albedo = None
        if textured:
            self._attr_buf = ctx.buffer(uv.tobytes())
            content.append((self._attr_buf, "2f", "in_uv"))
            # OpenGL's texture rows start at the bottom: upload flipped so that v = 1 is the image's top row.
            tex = np.ascontiguousarray(texture[::-1])
            self._albedo = ctx.texture((tex.shape[1], tex.shape[0]), 3, tex.tobytes(), alignment=1)
            self._albedo.build_mipmaps()
            self._albedo.filter = (ctx.LINEAR_MIPMAP_LINEAR, ctx.LINEAR)
            self._albedo.repeat_x = self._albedo.repeat_y = False
            self._prog["albedo"].value = 1
        else:
            self._attr_buf = ctx.buffer(colors.tobytes())
            content.append((self._attr_buf, "3f", "in_color"))
        self._vao = ctx.vertex_array(self._prog, content, index_buffer=self._idx_buf, index_element_size=4)

        rays = camera.ray_map()
        self._rays = ctx.texture((W, H), 2, rays.tobytes(), dtype="f4")
        self._rays.filter = (ctx.NEAREST, ctx.NEAREST)
        self._prog["ray_map"].value = 0

        self._color_tex = ctx.texture((W, H), 4, dtype="f1")
        self._depth_mm_tex = ctx.texture((W, H), 1, dtype="u2")
        self._depth_m_tex = ctx.texture((W, H), 1, dtype="f4")
        self._zbuf = ctx.depth_renderbuffer((W, H))
        self._fbo_full = ctx.framebuffer(
            color_attachments=[self._color_tex, self._depth_mm_tex, self._depth_m_tex],
            depth_attachment=self._zbuf,
        )
        self._fbo_fast = ctx.framebuffer(
            color_attachments=[self._color_tex, self._depth_mm_tex], depth_attachment=self._zbuf
        )
        self._clear_prog = ctx.program(vertex_shader=CLEAR_VERTEX_SHADER, fragment_shader=_CLEAR_FRAGMENT_SHADER)
        self._clear_prog["background"].value = tuple(c / 255.0 for c in self.background)
        self._clear_vao = ctx.vertex_array(self._clear_prog, [])
        self._clear_by_pass = any(self.background) or not self._zero_clear_works()
        self._incidence = None

    def _zero_clear_works(self) -> bool:
        # OpenGL leaves glClear of an integer attachment with a float colour undefined; all drivers
        # we know write 0 for 0.0 (the bit pattern and the value agree). Check once: where it does
        # not hold, a full-screen pass clears instead (slower on llvmpipe).
        ctx = self._ctx
        self._fbo_full.use()
        ctx.enable_only(ctx.NOTHING)
        self._clear_prog["background"].value = (1.0, 1.0, 1.0)
        self._clear_vao.render(mode=ctx.TRIANGLE_STRIP, vertices=4)
        self._clear_prog["background"].value = tuple(c / 255.0 for c in self.background)
        # The clear pass wrote 0 to the depth attachments; make them non-zero with a float clear first.
        self._fbo_full.clear(red=0.5, green=0.5, blue=0.5, alpha=0.5, depth=1.0)
        self._fbo_full.clear(red=0.0, green=0.0, blue=0.0, alpha=0.0, depth=1.0)
        probe = np.empty((4, 4), dtype=np.uint16)
        self._fbo_full.read_into(probe, viewport=(0, 0, 4, 4), components=1, attachment=1, alignment=1, dtype="u2")
        works = not probe.any()
        if not works:
            logger.debug("integer attachment clear is not zero on this driver: clearing with a pass")
        return works

    def _set_camera_uniforms(self) -> None:
        c = self.camera
        set_lens_uniforms(
            self._prog, (c.fx, c.fy, c.cx, c.cy), (c.k1, c.k2, c.k3, c.k4, c.k5, c.k6, c.p1, c.p2),
            float(c.metric_radius) ** 2, self._near, self._far,
        )
        self._prog["image_size"].value = (float(c.width), float(c.height))

    def render(
        self,
        vertices: np.ndarray,
        T_cam_from_world: np.ndarray | None = None,
        normals: np.ndarray | None = None,
        return_depth_m: bool = False,
    ) -> RenderResult:
        """Render one frame.

        Args:
            vertices: (N, 3) float vertex positions, metres, in the world frame.
            T_cam_from_world: 4x4 rigid transform taking world points to camera points (metres);
                None: the world frame is the camera frame (x right, y down, z forward).
            normals: (N, 3) world-frame vertex normals for smooth shading; None: computed here.
            return_depth_m: also return float32 metric depth (metres).
        Returns:
            `RenderResult` (color uint8 (H, W, 3), depth_mm uint16 (H, W), depth_m float32 (H, W) or None).
        """
        v = np.asarray(vertices, dtype=np.float32)
        if v.shape != (self.n_vertices, 3):
            raise ValueError(f"vertices must be ({self.n_vertices}, 3), got {v.shape}")
        T = np.eye(4) if T_cam_from_world is None else np.asarray(T_cam_from_world, dtype=np.float64)
        if T.shape != (4, 4):
            raise ValueError(f"T_cam_from_world must be 4x4, got {T.shape}")
        self._prog["T_cam_from_world"].write(T.T.astype(np.float32).tobytes())
        self._pos_buf.write(np.ascontiguousarray(v).tobytes())
        if self.shading == "smooth":
            if normals is None:
                if self._incidence is None:
                    self._incidence = face_incidence(self.faces, self.n_vertices)
                n = vertex_normals(v, self.faces, self._incidence)
            else:
                n = np.asarray(normals, dtype=np.float32)
            if n.shape != (self.n_vertices, 3):
                raise ValueError(f"normals must be ({self.n_vertices}, 3), got {n.shape}")
            self._nrm_buf.write(np.ascontiguousarray(n).tobytes())

        ctx = self._ctx
        # Without metric float depth the third attachment is left out: less memory traffic.
        fbo = self._fbo_full if return_depth_m else self._fbo_fast
        fbo.use()
        if self._clear_by_pass:
            fbo.clear(depth=1.0)
            ctx.enable_only(ctx.NOTHING)
            self._clear_vao.render(mode=ctx.TRIANGLE_STRIP, vertices=4)
        else:
            fbo.clear(red=0.0, green=0.0, blue=0.0, alpha=0.0, depth=1.0)
        ctx.enable_only(ctx.DEPTH_TEST)
        self._rays.use(location=0)
        if self._albedo is not None:
            self._albedo.use(location=1)
        self._vao.render()

        W, H = self.camera.width, self.camera.height
        color = np.empty((H, W, 3), dtype=np.uint8)
        fbo.read_into(color, components=3, attachment=0, alignment=1)
        depth_mm = np.empty((H, W), dtype=np.uint16)
        fbo.read_into(depth_mm, components=1, attachment=1, alignment=1, dtype="u2")
        depth_m = None
        if return_depth_m:
            depth_m = np.empty((H, W), dtype=np.float32)
            fbo.read_into(depth_m, components=1, attachment=2, alignment=1, dtype="f4")
        return RenderResult(color, depth_mm, depth_m)

    def release(self) -> None:
        """Free the OpenGL objects (the shared context stays)."""
        for obj in (
            self._vao, self._pos_buf, self._nrm_buf, self._idx_buf, self._attr_buf, self._rays,
            self._color_tex, self._depth_mm_tex, self._depth_m_tex, self._zbuf, self._fbo_fast, self._fbo_full,
            self._prog,
            self._clear_vao, self._clear_prog,
        ):
            obj.release()
        if self._albedo is not None:
            self._albedo.release()

    def __enter__(self) -> "MeshRenderer":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
