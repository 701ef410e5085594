"""Join the per-camera parts of one frame set's observation (one landmark stage per camera).

Each per-camera `LandmarkStage(cameras=[k])` returns an `ObservedFrame` with its crop at position k
and None elsewhere; `join_observed` merges the parts of one frame into the `ObservedFrame` a single
stage over every camera would have returned. Its `landmarks` timing is the slowest camera's (they
ran in parallel); each camera's own time is kept as `landmarks.<position>`.
"""

from __future__ import annotations

from collections.abc import Sequence

from mmface4d_stream.frame_records import ObservedFrame


def join_observed(parts: Sequence[ObservedFrame]) -> ObservedFrame:
    """One `ObservedFrame` from the per-camera parts of the same frame (in any order).

    parts: `ObservedFrame`s of one sequence and frame whose crops lists have the same length
    (the frame set's cameras); at each position at most one part has a crop. A single part is
    returned as it is.
    """
    if not parts:
        raise ValueError("join_observed needs at least one part")
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    n = len(first.crops)
    crops = [None] * n
    timings: dict[str, float] = {}
    for part in parts:
        if (part.seq, part.frame) != (first.seq, first.frame) or len(part.crops) != n:
            raise ValueError(f"cannot join frame {part.seq}/{part.frame} ({len(part.crops)} cameras) with "
                             f"{first.seq}/{first.frame} ({n} cameras)")
        for k, crop in enumerate(part.crops):
            if crop is None:
                continue
            if crops[k] is not None:
                raise ValueError(f"two parts of frame {first.frame} have a crop for camera position {k}")
            crops[k] = crop
            if "landmarks" in part.timings_ms:
                timings[f"landmarks.{k}"] = part.timings_ms["landmarks"]
        for stage, ms in part.timings_ms.items():
            timings[stage] = max(ms, timings.get(stage, ms))
    return ObservedFrame(first.seq, first.frame, first.t_capture_ns, crops, first.t_source_ns, timings)
