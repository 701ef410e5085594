"""join_parts: the fitter's join of the per-camera landmark actors' outputs for one tick."""

from __future__ import annotations

from mmface4d_stream.pipeline.camera_join import join_observed
from mmface4d_stream.frame_records import ObservedFrame


def join_parts(parts: tuple):
    """The tick's item from its per-camera parts: the joined `ObservedFrame`, or the first marker
    (None: the source ended; `Dropped`: one camera's stage dropped the frame set, so all of it is).
    One part passes as it is."""
    if len(parts) == 1:
        return parts[0]
    for part in parts:
        if not isinstance(part, ObservedFrame):
            return part
    return join_observed(parts)
