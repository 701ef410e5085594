"""FrontActor: the graph's first box as one actor: source -> landmarks in one process."""

from __future__ import annotations

from actors.landmark_actor import LandmarkActor
from actors.source_actor import SourceActor


class FrontActor(SourceActor):
    """A `SourceActor` that also runs the lane's one `LandmarkActor` as a plain object
    (`ray.fused_landmarks`, for lanes with a single landmark actor: one camera, or
    `landmarks.per_camera` false). `read_detect(tick)` is `detect(read(tick))`: the full-resolution
    frame set (a 1080p colour image is 6 MB) never leaves the process, and a frame costs one actor
    call before the fitter instead of two. Results are the separate actors' exactly.

    The constructor and `open` are the source's; `open_landmarks` (the arguments of
    `LandmarkActor.open`, once the source has said how many cameras it has) starts or re-opens the
    landmark part. `warm_up` and `reset` are the landmark part's (the graph calls them as it would
    on a landmark actor). `close` ends the source's sequence; the landmark part, like a landmark
    actor, keeps its MediaPipe graphs for the lane's next sequence. Without `open_landmarks` this is
    a plain `SourceActor` (lanes whose cameras have a landmark actor each).
    """

    def setup(self) -> None:
        super().setup()
        self.landmarks: LandmarkActor | None = None

    def open_landmarks(self, *args, **kwargs) -> bool:
        if self.landmarks is None:
            self.landmarks = LandmarkActor(*args, **kwargs)
        else:  # keeps its MediaPipe graphs when the cameras and settings are the same
            self.landmarks.open(*args, **kwargs)
        return True

    def _defers_color(self) -> bool:
        # With the landmark stage in this process the reading thread decodes: decoding in the
        # calling thread instead measured ~7 ms more CPU per frame (1 camera, live replay).
        return super()._defers_color() and self.landmarks is None

    def read_detect(self, tick: int):
        """Tick `tick`'s frame set (`read`) through the landmark stage (`LandmarkActor.detect`)."""
        return self.landmarks.detect(self.read(tick))

    def warm_up(self, frame_set=None, build: bool = True):
        return self.landmarks.warm_up(frame_set, build)

    def reset(self) -> bool:
        return self.landmarks.reset()
