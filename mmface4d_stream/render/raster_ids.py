"""Triangle ids and barycentrics per pixel of camera crops, rasterized with OpenGL (moderngl/EGL).

The CPU backend of `mmface4d_stream.fit.raster`. Each view (a mesh in one camera's frame, one crop
box of that camera's raw image) is drawn like `renderer.MeshRenderer` draws: every vertex goes
through the full Kinect lens model in the vertex shader (`gl.LENS_GLSL`), triangles are
rasterized with straight edges between the distorted vertices, pixel centres sit at integers and
the first row read back is the crop's top row. Instead of colour and depth the fragment shader
writes the triangle's index + 1 (integer target, 0 = no surface) and the perspective-correct
barycentrics of vertices 0 and 1 of the triangle (float target; vertex 2 gets 1 - b0 - b1), the
same quantities nvdiffrast's rasterizer reports.

Triangles are drawn unindexed (three corners per triangle, each carrying a unit barycentric), so
`gl_PrimitiveID` is the triangle's index. The views of one call share one tall framebuffer, one
viewport per view, and one read-back. One OpenGL context per process (`gl.shared_context`);
use from one thread.
"""

from __future__ import annotations

import numpy as np

from mmface4d_stream.render.gl import CLEAR_VERTEX_SHADER, LENS_GLSL, set_lens_uniforms, shared_context

__all__ = ["GLTriangleRasterizer"]

_VERTEX_SHADER = """
#version 330
uniform vec4 crop;            // the viewport's raw-image box: x0, y0 of its first pixel's left/top edge + 0.5, w, h
""" + LENS_GLSL + """
in vec3 in_position;          // camera frame, metres
in vec2 in_bary;
out vec2 v_bary;

void main() {
    v_bary = in_bary;
    vec2 uv = kinect_pixel(in_position);
    // Raw pixel centre x0 + i·stride maps to viewport x = i + 0.5; rows are not flipped: row 0 = top.
    vec2 ndc = (uv - crop.xy + 0.5) / crop.zw * 2.0 - 1.0;
    gl_Position = kinect_clip(ndc, in_position.z);
}
"""

_FRAGMENT_SHADER = """
#version 330
in vec2 v_bary;
layout(location = 0) out int out_id;
layout(location = 1) out vec2 out_bary;

void main() {
    out_id = gl_PrimitiveID + 1;
    out_bary = v_bary;
}
"""

_CLEAR_FRAGMENT_SHADER = """
#version 330
layout(location = 0) out int out_id;
layout(location = 1) out vec2 out_bary;
void main() {
    out_id = 0;
    out_bary = vec2(0.0);
}
"""

# Framebuffer rows per draw call batch (views are stacked vertically); well inside the 8192-texel
# limit every OpenGL 3.3 driver supports.
_MAX_ROWS = 8192


class GLTriangleRasterizer:
    """Rasterizes triangle ids and barycentrics of one topology into crops of Kinect cameras.

    Args:
        triangles: (F, 3) int vertex indices (fixed for the rasterizer's life).
        n_vertices: N, the vertex count of every mesh.
        near, far: clip range along z, metres.
    """

    def __init__(self, triangles: np.ndarray, n_vertices: int, near: float = 0.05, far: float = 20.0):
        tri = np.asarray(triangles)
        if tri.ndim != 2 or tri.shape[1] != 3 or len(tri) == 0 or not np.issubdtype(tri.dtype, np.integer):
            raise ValueError(f"triangles must be a non-empty integer (F, 3) array, got {tri.dtype} {tri.shape}")
        if tri.min() < 0 or tri.max() >= int(n_vertices):
            raise ValueError(f"triangles index vertices outside [0, {int(n_vertices)})")
        if len(tri) >= 2**31 - 1:
            raise ValueError("too many triangles for int32 ids")
        if not 0 < near < far:
            raise ValueError(f"need 0 < near < far, got near={near}, far={far}")
        self.triangles = tri.astype(np.int64)
        self.n_vertices = int(n_vertices)
        self.near, self.far = float(near), float(far)
        ctx = shared_context()
        self._ctx = ctx
        F = len(tri)
        self._prog = ctx.program(vertex_shader=_VERTEX_SHADER, fragment_shader=_FRAGMENT_SHADER)
        self._pos_buf = ctx.buffer(reserve=F * 3 * 12, dynamic=True)
        bary = np.tile(np.float32([[1, 0], [0, 1], [0, 0]]), (F, 1))
        self._bary_buf = ctx.buffer(bary.tobytes())
        self._vao = ctx.vertex_array(self._prog, [(self._pos_buf, "3f", "in_position"),
                                                  (self._bary_buf, "2f", "in_bary")])
        self._clear_prog = ctx.program(vertex_shader=CLEAR_VERTEX_SHADER, fragment_shader=_CLEAR_FRAGMENT_SHADER)
        self._clear_vao = ctx.vertex_array(self._clear_prog, [])
        self._size = (0, 0)
        self._fbo = None
        self._targets: tuple = ()

    def _framebuffer(self, width: int, rows: int):
        if self._fbo is None or self._size[0] < width or self._size[1] < rows:
            self._release_targets()
            ctx = self._ctx
            w, h = max(width, self._size[0]), max(rows, self._size[1])
            ids = ctx.texture((w, h), 1, dtype="i4")
            bary = ctx.texture((w, h), 2, dtype="f4")
            zbuf = ctx.depth_renderbuffer((w, h))
            self._fbo = ctx.framebuffer(color_attachments=[ids, bary], depth_attachment=zbuf)
            self._targets = (ids, bary, zbuf)
            self._size = (w, h)
        return self._fbo

    def rasterize(self, vertices: np.ndarray, cameras, crops: np.ndarray, height: int, width: int,
                  stride: int = 1):
        """Rasterize B views.

        Args:
            vertices: (B, N, 3) float, each view's mesh in its camera's frame, metres.
            cameras: B `FitCamera`s (pixel intrinsics, Kinect lens model).
            crops: (B, 4) int x0, y0, w, h: each view's crop box in its camera's raw image, pixels.
            height, width: the output size in output pixels (at least every crop's h and w over
                the stride); pixels beyond a view's own crop, or outside its camera's image, are
                background.
            stride: raw pixels between output pixels: output pixel (i, j) is raw pixel
                (x0 + j·stride, y0 + i·stride) (a viewport `stride` times smaller, same camera).
        Returns:
            (tri_ids int32 (B, height, width), -1 = background; barycentrics float32
            (B, height, width, 2), weights of the triangle's vertices 0 and 1, zero on background).
        """
        v = np.asarray(vertices, dtype=np.float32)
        B = v.shape[0]
        if v.ndim != 3 or v.shape[1:] != (self.n_vertices, 3):
            raise ValueError(f"vertices must be (B, {self.n_vertices}, 3), got {v.shape}")
        crops = np.asarray(crops, dtype=np.int64).reshape(B, 4)
        H, W = int(height), int(width)
        s = max(int(stride), 1)
        ids = np.empty((B, H, W), dtype=np.int32)
        bary = np.empty((B, H, W, 2), dtype=np.float32)
        per_draw = max(1, min(B, _MAX_ROWS // H))
        ctx = self._ctx
        for start in range(0, B, per_draw):
            views = range(start, min(B, start + per_draw))
            rows = H * len(views)
            fbo = self._framebuffer(W, rows)
            fbo.use()
            fbo.viewport = (0, 0, W, rows)
            fbo.clear(depth=1.0)
            ctx.enable_only(ctx.NOTHING)
            self._clear_vao.render(mode=ctx.TRIANGLE_STRIP, vertices=4)
            ctx.enable_only(ctx.DEPTH_TEST)
            for k, b in enumerate(views):
                cam = cameras[b]
                r2 = np.inf if cam.max_radius is None else float(cam.max_radius) ** 2
                set_lens_uniforms(self._prog, (cam.fx, cam.fy, cam.cx, cam.cy), cam.distortion, r2,
                                  self.near, self.far)
                x0, y0 = crops[b, :2]
                # Output pixel centre j + 0.5 of W sits at raw pixel x0 + j·s.
                self._prog["crop"].value = (float(x0) + 0.5 - 0.5 * s, float(y0) + 0.5 - 0.5 * s, float(W * s), float(H * s))
                self._pos_buf.write(np.ascontiguousarray(v[b][self.triangles]).tobytes())
                fbo.viewport = (0, k * H, W, H)
                self._vao.render()
            n = len(views)
            fbo.read_into(ids[start:start + n], viewport=(0, 0, W, rows), components=1, attachment=0,
                          alignment=1, dtype="i4")
            fbo.read_into(bary[start:start + n], viewport=(0, 0, W, rows), components=2, attachment=1,
                          alignment=1, dtype="f4")
        ids -= 1
        # Outside a view's own crop or its camera's image: background.
        for b in range(B):
            x0, y0, w, h = (int(c) for c in crops[b])
            cam = cameras[b]
            keep_w = max(0, min(-(-min(w, int(cam.width) - x0) // s), W))
            keep_h = max(0, min(-(-min(h, int(cam.height) - y0) // s), H))
            lo_x, lo_y = -(-max(0, -x0) // s), -(-max(0, -y0) // s)
            outside = np.ones((H, W), dtype=bool)
            outside[lo_y:keep_h, lo_x:keep_w] = False
            ids[b][outside] = -1
        bary[ids < 0] = 0.0
        return ids, bary

    def _release_targets(self) -> None:
        if self._fbo is not None:
            self._fbo.release()
            for t in self._targets:
                t.release()
        self._fbo, self._targets = None, ()

    def release(self) -> None:
        """Free the OpenGL objects (the shared context stays)."""
        self._release_targets()
        for obj in (self._vao, self._pos_buf, self._bary_buf, self._prog, self._clear_vao, self._clear_prog):
            obj.release()

    def __enter__(self) -> "GLTriangleRasterizer":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
