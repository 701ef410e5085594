"""SharedFitActor: one fitter actor serving many sequences at once (one per GPU), batching their frames.

Each sequence (a lane's pipeline) opens a stream under its own key: a `MultiStreamFitter` slot with
its warm start, identity and template, driven by a `FitStage` that keeps the sequence's
bookkeeping (lost frames, residual sums, checkpoints, faces) exactly as the per-lane `FitActor` does.
The frames that are ready from different streams within a short window are fitted in one
`MultiStreamFitter.process` call.

Calls arrive concurrently (an async actor: Ray does not keep their order), so every call carries
its lane's tick (the driver's frame counter, increasing through the whole sequence): a stream
takes its ticks strictly in order. A tick older than the stream's last (re)open, or a tick for a
stream this process does not know (the actor restarted), raises `StreamLost`: the lane resumes
from its checkpoint, as after any actor crash.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor

from actors.fit_stream import FitStream, fitter_gate
from actors.join import join_parts
from mmface4d_stream.pipeline.stage_config import FitStageConfig
from mmface4d_stream.frame_records import ObservedFrame

log = logging.getLogger(__name__)


class StreamLost(RuntimeError):
    """The shared fitter has no open stream for this lane and tick (it restarted, or the lane was
    rewound past the tick): the lane resumes from its last checkpoint."""


@dataclasses.dataclass
class _Stream:
    """One lane's stream: its fitter slot, its `FitStream` (a `FitStage` over the slot, with the
    stale-frame gate, faults and checkpoints of a per-lane `FitActor`), and the calls waiting for their turn."""

    slot: int
    fit: FitStream
    next_tick: int
    waiting: dict = dataclasses.field(default_factory=dict)  # tick -> (item, asyncio.Future)
    batches: int = 0
    batched_frames: int = 0  # sum of the batch sizes this stream's frames were solved in
    last_solve: int = -1  # the solve that took its latest frame: beyond max_batch, the longest-waiting go first

    @property
    def stage(self):
        return self.fit.stage

    def fail_waiting(self, reason: str) -> None:
        for _, future in self.waiting.values():
            if not future.done():
                future.set_exception(StreamLost(reason))
        self.waiting.clear()


class SharedFitActor:
    """Fits the frames of many lanes' streams in shared solves (an async Ray actor).

    config: the fit stage's settings; its `device` is the one this actor fits on (the graph gives
    `cuda` to an actor that reserved a GPU). batch_window_ms: after the first frame is
    ready, how long to wait for the other open streams' frames (none: solve at once when every
    open stream has a frame ready). max_batch: most frames in one solve.
    """

    def __init__(self, config: FitStageConfig, batch_window_ms: float = 5.0, max_batch: int = 64):
        from mmface4d_stream.fit.multi import MultiStreamFitter

        config.set_torch_threads()
        self.config = config
        self.device = config.device
        self.batch_window_s = float(batch_window_ms) / 1e3
        self.max_batch = int(max_batch)
        # A template is per subject: every stream builds its own (model None); a BFM is shared.
        self._model = config.load_model()
        self.fitter = MultiStreamFitter(self._model, config.fitter_config(), self.device)
        self._streams: dict[str, _Stream] = {}
        # Every use of the fitter runs in this one thread, in submission order: solves never overlap
        # with a stream being opened or checkpointed, and torch keeps its thread settings.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="shared-fitter")
        self._wake: asyncio.Event | None = None
        self._server: asyncio.Task | None = None
        self.solves = 0

    # ------------------------------------------------------------------------------ streams

    async def _in_fitter_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _ensure_server(self) -> None:
        if self._server is None or self._server.done():
            self._wake = asyncio.Event()
            self._server = asyncio.get_running_loop().create_task(self._serve())

    async def open_stream(self, key: str, rig_transforms: list | None, checkpoint_every: int = 15,
                          fault: dict | None = None, state: dict | None = None, next_tick: int = 0,
                          max_latency_ms: float | None = None, hurry_after_ms: float | None = None) -> dict:
        """Open (or re-open, dropping what it had) the stream of lane `key`: rig as per camera 4x4
        T_ref_from_cam nested lists (None: one camera), continuing from a `FitStage.state()` when
        given; its next call is tick `next_tick`. max_latency_ms (live policy): frames that would
        leave the fitter later than this after capture are dropped (fitter_busy); hurry_after_ms:
        older ones than this are fitted the fast way (`FitStream`). Returns {"device", "slot"}."""
        self._ensure_server()
        old = self._streams.pop(key, None)
        if old is not None:
            old.fail_waiting(f"stream {key} was re-opened")

        def build() -> _Stream:
            from mmface4d_stream.pipeline.stages import StreamSlot

            if old is not None:
                self.fitter.close_stream(old.slot)
            slot = self.fitter.open_stream()
            stage = self.config.build(rig_transforms, model=self._model, fitter=StreamSlot(self.fitter, slot))
            if state is not None:
                stage.restore(state)
            fit = FitStream(stage, checkpoint_every, fault, fitter_gate(max_latency_ms), hurry_after_ms)
            return _Stream(slot, fit, int(next_tick))

        stream = await self._in_fitter_thread(build)
        self._streams[key] = stream
        self._wake.set()
        return {"device": self.device, "slot": stream.slot}

    async def close_stream(self, key: str) -> bool:
        """Forget lane `key`'s stream; calls still waiting for it raise `StreamLost`."""
        stream = self._streams.pop(key, None)
        if stream is None:
            return False
        stream.fail_waiting(f"stream {key} was closed")
        await self._in_fitter_thread(self.fitter.close_stream, stream.slot)
        return True

    async def warm_up(self, key: str, *parts) -> dict:
        """Fit lane `key`'s pre-roll frame (per-camera parts) before its capture clock starts; the
        stream keeps it as warm start with zero counts (see `FitActor.warm_up`). {"seconds", "lost"}."""
        stream = self._stream(key)
        observed = join_parts(parts)
        if not isinstance(observed, ObservedFrame):
            return {"seconds": 0.0, "lost": None}
        return await self._in_fitter_thread(stream.stage.warm_up, observed)

    async def fit(self, key: str, tick: int, *parts):
        """The lane's tick `tick`: an `ObservedFrame` (or its per-camera parts) is fitted (in a
        shared solve) into a `MeshPacket`; markers (None, `Dropped`) pass through, in tick order too."""
        self._ensure_server()
        stream = self._streams.get(key)
        if stream is None:
            raise StreamLost(f"the shared fitter has no stream {key} (it restarted)")
        if tick < stream.next_tick or tick in stream.waiting:
            raise StreamLost(f"tick {tick} of stream {key} is older than its restore")
        observed = join_parts(parts)
        if isinstance(observed, ObservedFrame):
            observed = stream.fit.admit(observed) or observed
        future = asyncio.get_running_loop().create_future()
        stream.waiting[tick] = (observed, future)
        self._wake.set()
        return await future

    async def summary(self, key: str) -> dict:
        """The stream's `FitStage.summary()`, the device, and the mean size of the solves its frames were in."""
        stream = self._stream(key)
        summary = await self._in_fitter_thread(stream.stage.summary)
        mean = stream.batched_frames / stream.batches if stream.batches else None
        return dict(summary, device=self.device, shared_fitter={"mean_batch": mean})

    async def faces(self, key: str):
        stream = self._stream(key)
        return await self._in_fitter_thread(lambda: stream.stage.faces)

    async def ping(self) -> bool:
        return True

    def _stream(self, key: str) -> _Stream:
        stream = self._streams.get(key)
        if stream is None:
            raise StreamLost(f"the shared fitter has no stream {key} (it restarted)")
        return stream

    # ---------------------------------------------------------------------------- batching

    def _ready(self) -> list[_Stream]:
        """Streams whose next tick is a frame to fit; markers due before it are passed on first."""
        ready = []
        for stream in self._streams.values():
            while stream.next_tick in stream.waiting:
                item, future = stream.waiting[stream.next_tick]
                if isinstance(item, ObservedFrame):
                    ready.append(stream)
                    break
                del stream.waiting[stream.next_tick]
                stream.next_tick += 1
                if not future.done():
                    future.set_result(item)
        return ready

    async def _serve(self) -> None:
        """Forever: wait for a ready frame, gather others for up to the window, solve them together."""
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            ready = self._ready()
            if not ready:
                await self._wake.wait()
                continue
            deadline = loop.time() + self.batch_window_s
            while len(ready) < min(self.max_batch, len(self._streams)) and loop.time() < deadline:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), deadline - loop.time())
                except asyncio.TimeoutError:
                    pass
                ready = self._ready()
            batch = []
            for stream in sorted(ready, key=lambda s: s.last_solve)[:self.max_batch]:
                observed, future = stream.waiting.pop(stream.next_tick)
                stream.next_tick += 1
                stream.last_solve = self.solves
                batch.append((stream, observed, future))
            try:
                outcomes = await self._in_fitter_thread(self._solve, [(s, o) for s, o, _ in batch])
            except Exception as exc:  # a bug outside the stages' own error handling: every frame fails
                outcomes = [exc] * len(batch)
            self.solves += 1
            for (stream, _, future), outcome in zip(batch, outcomes):
                stream.batches += 1
                stream.batched_frames += len(batch)
                if future.done():  # the stream was closed or re-opened meanwhile
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    def _solve(self, batch: list[tuple[_Stream, ObservedFrame]]) -> list:
        """(In the fitter thread) one shared solve: per frame its `MeshPacket` or its exception."""
        from mmface4d_stream.pipeline.stages import FitStage

        outcomes: list = [None] * len(batch)
        solving = []
        for i, (stream, observed) in enumerate(batch):
            try:
                stream.fit.inject_fault(observed)
                solving.append(i)
            except Exception as exc:
                outcomes[i] = exc
        meshes = FitStage.process_batch([(batch[i][0].stage, batch[i][1]) for i in solving])
        for i, mesh in zip(solving, meshes):
            stream = batch[i][0]
            if isinstance(mesh, BaseException):
                outcomes[i] = mesh
                continue
            outcomes[i] = stream.fit.packet(mesh)
        return outcomes
