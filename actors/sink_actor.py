"""SinkActor: the graph's last box as one actor: [smoother ->] {encoder, publisher} in one process."""

from __future__ import annotations

from actors.base import StageActor
from actors.nut_actor import NutActor
from actors.smooth_actor import SmoothActor
from actors.publish_actor import PublishActor


class SinkActor(StageActor):
    """The `SmoothActor`, `NutActor` and `PublishActor` of a sequence as plain objects in one actor
    (`ray.fused_sinks`): a fitted packet costs one actor call after the fitter instead of three
    (each call is a serialization of the mesh, a task in the driver and a reply). The parts behave
    exactly as their own actors: `consume` runs smoother, publisher and encoder in that order (the
    mesh goes out before it is encoded, as with separate actors, where the publisher and the
    encoder take it at the same time: encoding is not part of capture → publish), and the graph
    reaches any part's other methods with `call(part, method, ...)`.

    parts: {"smoother" | "encoder" | "publisher": (args, kwargs) of that part's `open`}; the
    encoder is required, the others optional. One actor serves one sequence (it holds the
    publisher's socket): the graph starts a new one per sequence and never restarts it (the
    encoder cannot append to a file a dead process left).
    """

    PARTS = {"smoother": SmoothActor, "encoder": NutActor, "publisher": PublishActor}

    def open(self, parts: dict[str, tuple[tuple, dict]]) -> bool:
        unknown = set(parts) - set(self.PARTS)
        if unknown or "encoder" not in parts:
            raise ValueError(f"a mesh sink has an encoder and optionally a smoother and a publisher, got {sorted(parts)}")
        self.parts = {name: self.PARTS[name](*args, **kwargs) for name, (args, kwargs) in parts.items()}
        return True

    def consume(self, packet) -> tuple:
        """One tick's packet (`MeshPacket`, `Dropped` or None) through the parts: (the encoder's
        `FrameReport` or None, the publisher's capture → publish ms or None)."""
        smoother = self.parts.get("smoother")
        if smoother is not None:
            packet = smoother.smooth(packet)
        publisher = self.parts.get("publisher")
        published_ms = None if publisher is None else publisher.publish(packet)
        return self.parts["encoder"].write(packet), published_ms

    def call(self, part: str, method: str, *args, **kwargs):
        """Part `part`'s `method(*args, **kwargs)` (what a call on that part's own actor would do)."""
        return getattr(self.parts[part], method)(*args, **kwargs)

    def has(self, part: str) -> bool:
        return part in self.parts
