"""Offscreen rendering, synthetic Kinect captures with ground truth, and mesh-sequence videos.

- `renderer`: `MeshRenderer` draws a mesh (vertex colours or a uv texture) into a k4a `CameraModel`
  (Kinect lens distortion included) headless with moderngl/EGL; returns RGB and metric depth.
  `gl`: the shared OpenGL context and the lens model's GLSL (also used by `raster_ids`).
- `subject`: the sample subject built at run time from scikit-image's astronaut portrait and
  MediaPipe FaceMesh (`mesh_ops`: vertex normals, boundary loops, Loop subdivision); `performance`: its
  deterministic talking performance (its speech-like audio is `audio.speech`).
- `synth`: `synthesize_capture` writes Kinect MKVs, MMFace4D dataset files and ground truth
  (`mmface4d synth`); `kinect_sensor`: the simulated Kinect depth noise and IR image.
- `visualize`: `render_mesh_video` renders a mesh nut triplet to `output.mp4` (`mmface4d visualize`).
"""
