"""SharedFitActor as a plain object (no Ray): streams in tick order, batched solves, restore, lost streams."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from actors import Dropped, FitActor, MeshPacket, SharedFitActor, StreamLost
from mmface4d_stream.pipeline.stage_config import FitStageConfig

OPTIONS = FitStageConfig(face_model="template", device="cpu", torch_threads=1)


def test_each_stream_takes_its_ticks_in_order_and_fits_like_its_own_fitter(one_camera_observed):
    observed = one_camera_observed[:4]
    own = FitActor(None, OPTIONS, checkpoint_every=2)
    expected = [own.fit(o) for o in observed]
    # Stream b has a dropped frame between its frames 1 and 2: tick 2 is that marker.
    marker = Dropped(observed[0].seq, 99, "landmarks", "old")
    ticks_b = observed[:2] + [marker] + observed[2:]

    async def run():
        shared = SharedFitActor(OPTIONS, batch_window_ms=50.0, max_batch=8)
        assert (await shared.open_stream("a", None, 2))["device"] == "cpu"
        await shared.open_stream("b", None, 2)
        # Ray runs an async actor's calls in any order: here the latest ticks come first.
        calls = [shared.fit("a", t, observed[t]) for t in reversed(range(4))]
        calls += [shared.fit("b", t, ticks_b[t]) for t in reversed(range(5))]
        results = await asyncio.gather(*calls)
        a, b = results[:4][::-1], results[4:][::-1]
        summaries = [await shared.summary("a"), await shared.summary("b")]

        # Re-opened at its frame-2 checkpoint (as after a restart), stream a continues from tick 10.
        waiting = asyncio.ensure_future(shared.fit("a", 11, observed[3]))
        await asyncio.sleep(0)
        await shared.open_stream("a", None, 2, state=a[2].checkpoint.carry_model(a[0].checkpoint).fitter, next_tick=10)
        with pytest.raises(StreamLost):  # the call that waited in the old stream
            await waiting
        with pytest.raises(StreamLost):  # a tick from before the re-open
            await shared.fit("a", 3, observed[3])
        resumed = await shared.fit("a", 10, observed[3])
        with pytest.raises(StreamLost):  # a stream this process does not know (the actor restarted)
            await shared.fit("c", 0, observed[0])
        assert await shared.close_stream("b") and not await shared.close_stream("b")
        return a, b, summaries, resumed

    a, b, summaries, resumed = asyncio.run(run())
    assert b[2] is marker
    b = b[:2] + b[3:]
    for packets in (a, b):
        assert all(isinstance(p, MeshPacket) for p in packets)
        assert [p.mesh.frame for p in packets] == [0, 1, 2, 3]
        assert packets[0].faces is not None and all(p.faces is None for p in packets[1:])
        assert [p.checkpoint is not None for p in packets] == [True, False, True, False]
        for got, want in zip(packets, expected):
            np.testing.assert_allclose(got.mesh.vertices, want.mesh.vertices, atol=1e-5)
    # Both streams had every frame ready together: each solve took one frame of each.
    assert [s["shared_fitter"]["mean_batch"] for s in summaries] == [2.0, 2.0]
    assert summaries[0]["frames"] == 4 and summaries[0]["frames_lost_face"] == []
    # Restored like a lane's own fitter restored from the same checkpoint.
    own_restored = FitActor(None, OPTIONS, checkpoint_every=2)
    own_restored.restore(expected[2].checkpoint.carry_model(expected[0].checkpoint).fitter)
    want = own_restored.fit(observed[3])
    assert resumed.faces is not None  # a re-opened stream sends its topology again
    np.testing.assert_allclose(resumed.mesh.vertices, want.mesh.vertices, atol=1e-5)


def test_a_frame_that_fails_fails_only_its_own_stream(one_camera_observed):
    from mmface4d_stream.errors import StageError

    observed = one_camera_observed[:2]

    async def run():
        shared = SharedFitActor(OPTIONS, batch_window_ms=50.0)
        await shared.open_stream("a", None, 15, fault={"stage": "fitter", "frame": 1, "kind": "raise"})
        await shared.open_stream("b", None, 15)
        calls = [shared.fit(key, t, observed[t]) for key in "ab" for t in range(2)]
        return await asyncio.gather(*calls, return_exceptions=True)

    a0, a1, b0, b1 = asyncio.run(run())
    assert isinstance(a1, StageError) and str(a1).startswith(f"stage fitter failed on sequence {observed[1].seq}, frame 1")
    assert all(isinstance(p, MeshPacket) for p in (a0, b0, b1)) and b1.mesh.frame == 1
