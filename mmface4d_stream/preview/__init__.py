"""Live preview for the capture operator: the reconstructed face in a web page as it happens.

`start_preview_server(url, host, port)` subscribes to the ZeroMQ mesh stream at `url` and serves a
page (three.js, WebGL) that draws the newest mesh, the stream's rate, latency, drops and face-lost
warnings, and per-camera thumbnails when the stream carries them. `mmface4d preview URL` runs it
from the command line. The page's three.js is vendored by ``tools/build_preview_assets.sh``.
"""

from mmface4d_stream.preview.server import DEFAULT_HOST, DEFAULT_PORT, PreviewServer, start_preview_server

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "PreviewServer", "start_preview_server"]
