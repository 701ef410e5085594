"""`PreviewServer`: the live-preview web server (aiohttp), run in a background thread.

It follows a mesh stream with `StreamRelay` and serves, on a local port:

- ``/``: the page (``web/static/index.html``), or an error page naming the build command when the
  vendored three.js is missing (HTTP 503);
- ``/static/…``: the page's script, style sheet and the vendored three.js modules;
- ``/ws``: the WebSocket that pushes the topology and meshes (binary, see `framing`), camera
  thumbnails (binary, at most `THUMBNAIL_PERIOD_S` apart) and a JSON status text message every
  `STATUS_PERIOD_S`;
- ``/status.json``: the same status for scripts.

Only the latest mesh is ever sent: each page may have `framing.MESH_WINDOW` meshes unacknowledged;
meshes that arrive meanwhile overwrite each other in the relay, so a slow page sees fewer, newer
meshes and nothing queues up. A page reload opens a new WebSocket, which gets the current topology
and mesh at once.

Binding to anything but loopback shows faces to the network; the server then requires a random
access token in the URL (``?token=…``, part of `PreviewServer.url`) unless one is given. The
WebSocket also refuses cross-origin pages, and without a token every request must name a loopback
host, so a web site open in the operator's browser cannot read the stream from a loopback server
(not even by rebinding its own name to 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import secrets
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSCloseCode, WSMsgType, web

from mmface4d_stream.preview import framing
from mmface4d_stream.preview.assets import STATIC_DIR, missing_assets, missing_assets_message
from mmface4d_stream.preview.relay import StreamRelay
from mmface4d_stream.stream.curve import is_loopback_host

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
STATUS_PERIOD_S = 0.5
THUMBNAIL_PERIOD_S = 0.1
# A page that has not acknowledged its meshes for this long gets new credit (a lost or
# misbehaving page then costs at most MESH_WINDOW meshes per this period).
CREDIT_TIMEOUT_S = 3.0
# Page -> server messages are tiny acknowledgements.
MAX_PAGE_MESSAGE_BYTES = 4096
_LOG_BAD_FIRST = 5


@dataclasses.dataclass(eq=False)
class _Page:
    """Per-WebSocket sending state (hashed by identity: kept in a set of open pages)."""

    ws: web.WebSocketResponse
    wake: asyncio.Event
    topology_key: int | None = None
    mesh_seq: int = 0
    in_flight: int = 0
    in_flight_since: float = 0.0
    thumbnail_versions: dict[str, int] = dataclasses.field(default_factory=dict)
    thumbnails_sent_s: float = -float("inf")
    status_sent_s: float = -float("inf")
    meshes_sent: int = 0
    acks: int = 0
    bad_messages: int = 0


class PreviewServer:
    """Serves the live preview of the mesh stream at `stream_url` on http://host:port/.

    Args:
        stream_url: the ZeroMQ publisher endpoint, e.g. ``tcp://127.0.0.1:5555``.
        host: address to listen on; loopback by default. Another address (e.g. ``0.0.0.0`` for a
            laptop on the capture network) requires the access token.
        port: TCP port; 0 picks a free one (see `port`).
        token: access token required in ``?token=`` (generated for non-loopback hosts when None;
            not required on loopback unless given).
        static_dir: the page's files (tests point it elsewhere).
        subscriber_options: extra keyword arguments of `MeshSubscriber` (e.g. curve_server_key).

    Use `start_preview_server` to construct and start one; `close()` stops it.
    """

    def __init__(
        self,
        stream_url: str,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        token: str | None = None,
        static_dir: Path | str = STATIC_DIR,
        subscriber_options: Mapping[str, Any] | None = None,
    ):
        if not 0 <= int(port) <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {port}")
        if not host:
            raise ValueError("host must be an address or name to listen on, got an empty string")
        self.stream_url = stream_url
        self.host = host
        self.port = int(port)
        if token is not None and not token:
            raise ValueError("token must be a non-empty string (or None)")
        if token is None and not is_loopback_host(host):
            token = secrets.token_urlsafe(16)
        self.token = token
        self.static_dir = Path(static_dir)
        self._subscriber_options = dict(subscriber_options or {})
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stopped = threading.Event()
        self._startup_error: BaseException | None = None
        self._runner: web.AppRunner | None = None
        self._pages: set[_Page] = set()
        self._relay: StreamRelay | None = None

    # ------------------------------------------------------------------------------ lifecycle

    def start(self) -> "PreviewServer":
        """Subscribe to the stream and start serving; returns once the port is bound.

        Raises OSError when the port cannot be bound, ValueError for a bad stream URL.
        """
        if self._thread is not None:
            raise ValueError("preview server already started")
        missing = missing_assets(self.static_dir)
        if missing:
            log.error("%s; the page will say so", missing_assets_message(missing, self.static_dir))
        try:
            self._relay = StreamRelay(self.stream_url, on_change=self._wake_all_threadsafe,
                                      subscriber_options=self._subscriber_options)
        except Exception as exc:
            if type(exc).__module__.startswith("zmq"):
                raise ValueError(f"cannot subscribe to {self.stream_url!r}: {exc}") from exc
            raise
        self._thread = threading.Thread(target=self._thread_main, name="preview-server", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._startup_error is not None:
            self._relay.close()
            raise self._startup_error
        if not is_loopback_host(self.host):
            log.warning("preview reachable from the network on %s:%d; open it with its token: %s",
                        self.host, self.port, self.url)
        log.info("live preview of %s at %s", self.stream_url, self.url)
        return self

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._startup())
        except BaseException as exc:
            self._startup_error = exc
            self._started.set()
            loop.close()
            self._stopped.set()
            return
        self._loop = loop
        self._started.set()
        try:
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
        finally:
            loop.close()
            self._stopped.set()

    async def _startup(self) -> None:
        app = web.Application()
        app.router.add_get("/", self._handle_index)
        app.router.add_get("/ws", self._handle_ws)
        app.router.add_get("/status.json", self._handle_status)
        if self.static_dir.is_dir():
            app.router.add_static("/static", self.static_dir, follow_symlinks=False)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            raise
        self.port = int(self._runner.addresses[0][1])

    async def _shutdown(self) -> None:
        for page in list(self._pages):
            await page.ws.close(code=WSCloseCode.GOING_AWAY, message=b"preview server stopped")
        if self._runner is not None:
            await self._runner.cleanup()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop serving (pages see the socket close and retry) and stop following the stream."""
        loop = self._loop
        if loop is not None and not self._stopped.is_set():
            try:
                loop.call_soon_threadsafe(loop.stop)
            except RuntimeError:  # already closed
                pass
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._relay is not None:
            self._relay.close()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the server stops (True) or `timeout_s` passes (False)."""
        return self._stopped.wait(timeout_s)

    def __enter__(self) -> "PreviewServer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def url(self) -> str:
        """The page's address (with ``?token=`` when a token is required)."""
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        query = f"?token={self.token}" if self.token else ""
        return f"http://{host}:{self.port}/{query}"

    @property
    def relay(self) -> StreamRelay:
        if self._relay is None:
            raise ValueError("preview server not started")
        return self._relay

    # --------------------------------------------------------------------------------- routes

    def _authorized(self, request: web.Request) -> bool:
        if self.token is None:
            # No token means loopback only: a page must also have reached us by a loopback name,
            # or a site could rebind its own name to 127.0.0.1 and read the stream (DNS rebinding).
            return is_loopback_host(urlsplit(f"//{request.host}").hostname or "")
        return secrets.compare_digest(request.query.get("token", ""), self.token)

    async def _handle_index(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return _error_page(403, "Access token required",
                               "Open the address printed by <code>mmface4d preview</code>, token included.")
        missing = missing_assets(self.static_dir)
        if missing:
            return _error_page(503, "Preview assets not built", _html_escape(missing_assets_message(missing, self.static_dir)))
        return web.FileResponse(self.static_dir / "index.html", headers={"Cache-Control": "no-store"})

    async def _handle_status(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return web.json_response({"error": "access token required"}, status=403)
        return web.json_response(self._status_message(None))

    async def _handle_ws(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return web.Response(status=403, text="access token required")
        if not _same_origin(request):
            log.warning("refused a preview WebSocket from origin %s", request.headers.get("Origin"))
            return web.Response(status=403, text="cross-origin WebSocket refused")
        # Compression would cost ~10 ms of CPU per BFM mesh for little gain on float noise.
        ws = web.WebSocketResponse(heartbeat=10.0, compress=False, max_msg_size=MAX_PAGE_MESSAGE_BYTES)
        await ws.prepare(request)
        page = _Page(ws=ws, wake=asyncio.Event())
        self._pages.add(page)
        log.info("preview page connected from %s (%d open)", request.remote, len(self._pages))
        sender = asyncio.ensure_future(self._send_loop(page))
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    self._on_page_text(page, message.data)
                elif message.type == WSMsgType.BINARY:
                    self._bad_page_message(page, f"unexpected binary message of {len(message.data)} bytes")
                elif message.type == WSMsgType.ERROR:
                    log.info("preview page socket error: %s", ws.exception())
                    break
        finally:
            sender.cancel()
            self._pages.discard(page)
            log.info("preview page disconnected (%d open)", len(self._pages))
        return ws

    # ------------------------------------------------------------------------------- sending

    def _wake_all_threadsafe(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._wake_all)
        except RuntimeError:  # the loop closed meanwhile
            pass

    def _wake_all(self) -> None:
        for page in self._pages:
            page.wake.set()

    async def _send_loop(self, page: _Page) -> None:
        ws = page.ws
        try:
            while not ws.closed:
                await self._send_news(page)
                try:
                    await asyncio.wait_for(page.wake.wait(), timeout=STATUS_PERIOD_S)
                except asyncio.TimeoutError:
                    pass
                page.wake.clear()
        except (ConnectionError, RuntimeError) as exc:  # the page went away mid-send
            log.debug("preview page send stopped: %s", exc)
        except asyncio.CancelledError:
            pass
        except Exception:
            # A bug must not leave a page connected but silent: close it, and it reconnects.
            log.exception("preview: sending to a page failed")
            await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"preview server error")

    async def _send_news(self, page: _Page) -> None:
        """Send what `page` has not seen yet, within its mesh window and the rate limits."""
        snap = self.relay.snapshot()
        ws = page.ws
        now = time.monotonic()
        topology = snap.topology
        if topology is not None and topology.key != page.topology_key:
            await ws.send_bytes(topology.frame)
            page.topology_key = topology.key
        if page.in_flight >= framing.MESH_WINDOW and now - page.in_flight_since > CREDIT_TIMEOUT_S:
            log.debug("preview page acknowledged nothing for %.1f s: new credit", CREDIT_TIMEOUT_S)
            page.in_flight = 0
        mesh = snap.mesh
        if (
            mesh is not None
            and mesh.seq > page.mesh_seq
            and mesh.topology_key == page.topology_key
            and page.in_flight < framing.MESH_WINDOW
        ):
            await ws.send_bytes(mesh.frame)
            page.mesh_seq = mesh.seq
            if page.in_flight == 0:
                page.in_flight_since = now
            page.in_flight += 1
            page.meshes_sent += 1
        news = [(cam, v, f) for cam, (v, f) in snap.thumbnails.items() if v > page.thumbnail_versions.get(cam, 0)]
        if news:
            wait_s = THUMBNAIL_PERIOD_S - (now - page.thumbnails_sent_s)
            if wait_s <= 0:
                for camera, version, frame in news:
                    await ws.send_bytes(frame)
                    page.thumbnail_versions[camera] = version
                page.thumbnails_sent_s = now
            else:
                asyncio.get_running_loop().call_later(wait_s, page.wake.set)
        if now - page.status_sent_s >= STATUS_PERIOD_S:
            await ws.send_str(json.dumps(self._status_message(page, snap.info), allow_nan=False))
            page.status_sent_s = now

    def _status_message(self, page: _Page | None, info: dict[str, Any] | None = None) -> dict[str, Any]:
        message = {"type": "status", "stream": info if info is not None else self.relay.info(),
                   "server": {"pages": len(self._pages)}}
        if page is not None:
            message["page"] = {"meshes_sent": page.meshes_sent, "acks": page.acks, "bad_messages": page.bad_messages}
        return message

    def _on_page_text(self, page: _Page, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            self._bad_page_message(page, "text message is not JSON")
            return
        if not isinstance(message, dict) or message.get("type") != "ack":
            self._bad_page_message(page, f"unknown page message {str(message)[:80]!r}")
            return
        n = message.get("n")
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1_000_000:
            self._bad_page_message(page, f"ack count must be a positive integer, got {n!r}")
            return
        page.acks += n
        page.in_flight = max(0, page.in_flight - n)
        page.in_flight_since = time.monotonic()
        page.wake.set()

    def _bad_page_message(self, page: _Page, reason: str) -> None:
        page.bad_messages += 1
        if page.bad_messages <= _LOG_BAD_FIRST:
            log.warning("ignored a malformed message from a preview page: %s", reason)


def start_preview_server(
    url: str,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    **options: Any,
) -> PreviewServer:
    """Start a live preview of the mesh stream at `url`; returns the running `PreviewServer`.

    The server runs in a background (daemon) thread; open `server.url` in a browser and call
    `server.close()` when done. `options` are `PreviewServer`'s keyword arguments (token,
    static_dir, subscriber_options). Raises OSError if the port is taken.
    """
    return PreviewServer(url, host, port, **options).start()


def _same_origin(request: web.Request) -> bool:
    """A browser names the page's origin; it must be this server (non-browsers send none)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc.lower() == request.host.lower()


def _html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _error_page(status: int, title: str, body_html: str) -> web.Response:
    html = (
        "<!doctype html><html><head><meta charset='utf-8'><title>mmface4d preview: "
        f"{title}</title></head><body style='font-family:sans-serif;background:#1b1d22;color:#eee;"
        f"padding:2em'><h1>{title}</h1><p id='error'>{body_html}</p></body></html>"
    )
    return web.Response(status=status, text=html, content_type="text/html", headers={"Cache-Control": "no-store"})
