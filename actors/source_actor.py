"""SourceActor: a sequence's frame sets (dataset files, MKV session, or live Kinects) into the graph."""

from __future__ import annotations

import logging

from actors.base import StageActor
from mmface4d_stream.pipeline.rig_setup import resolve_rig
from mmface4d_stream.pipeline.sources import skip_to
from mmface4d_stream.pipeline.stage_config import SourceConfig

log = logging.getLogger(__name__)


class SourceActor(StageActor):
    """Reads one sequence. Offline: `read` returns the next frame set (blocking on the files). Live
    (`live=True`): a thread keeps only the newest frame set (paced at device rate when `pace`) and
    `read` returns it; frames the graph was too busy to take are counted (`stats()["dropped"]`).

    inputs: MKV paths of one session, one dataset prefix `<dir>/<name>`, or `["kinect"]` for live
    devices (`kinect` options: serials, ...). config: what to read (cameras, max_frames, loop,
    pace). record_dir: live only: also write every frame set as a dataset sequence there (the
    capture itself).
    """

    fault_stage = "source"

    def setup(self) -> None:
        self.source = None
        self.recorder = None

    def open(self, inputs: list[str], config: SourceConfig | None = None, live: bool = False,
             kinect: dict | None = None, record_dir: str | None = None, name: str | None = None,
             fault: dict | None = None) -> bool:
        """Read another sequence (the constructor's arguments); the previous one is closed first.
        Lets one actor process (its imports and caches) serve many sequences."""
        if self.source is not None:
            self.close()
        config = config or SourceConfig()
        if inputs == ["kinect"]:
            from mmface4d_stream.pipeline.kinect import KinectSource

            self.source = KinectSource(name=name or "live", max_frames=config.max_frames, **(kinect or {}))
        else:
            self.source = config.open(inputs)
        self.name = name or self.source.name
        # Devices deliver at their own rate; only recordings need pacing.
        self.live, self.pace = live, config.pace and inputs != ["kinect"]
        self.keep = config.live_keep
        self.record_dir = record_dir
        self.recorder = None
        self.fault = fault
        self._frames = None
        self._latest = None
        self.read_count = 0
        self.start_frame = 0
        return True

    def info(self) -> dict:
        return {"name": self.name, "frames": len(self.source), "serials": list(self.source.serials),
                "input_frames": getattr(self.source, "input_frames", None),
                "camera_indices": list(self.source.camera_indices)}

    def calibrate(self, reference: int | None = None, rig_path: str | None = None,
                  save_path: str | None = None) -> tuple[list | None, int | None]:
        """(T_ref_from_cam per camera, reference index): identity (None) for one camera, else from
        `rig_path` or calibrated on the first frames (saved to `save_path_rig.json`): `resolve_rig`."""
        rig = resolve_rig(self.source, rig_path, reference, save_path)
        self._rig_info = rig.info()
        return None if rig.transforms is None else [t.tolist() for t in rig.transforms], rig.reference

    def rig_info(self) -> dict:
        """How the last `calibrate` got the rig: {"rig": "one camera" | "file" | "calibrated",
        "seconds": the calibration's time (None unless calibrated)}."""
        return dict(getattr(self, "_rig_info", {"rig": None, "seconds": None}))

    def preroll(self, max_frames: int = 30):
        """A frame set to warm the graph on before the capture clock starts: the first of the first
        `max_frames` where every camera has an image (None if there is none). Recordings are read
        from the start again by `start`; devices deliver it from their stream (it is not recorded)."""
        frames = iter(self.source)
        try:
            for count, frame_set in enumerate(frames):
                if count >= max_frames:
                    break
                if all(c is not None for c in frame_set.cameras):
                    return frame_set
        finally:
            close = getattr(frames, "close", None)
            if close is not None:
                close()
        return None

    def start(self, frame: int = 0) -> bool:
        """(Re)start reading at frame number `frame` (after an actor restart the graph resumes there)."""
        self.stop()
        self.start_frame = frame
        frames = self.source.frames(defer_color=self._defers_color())
        frames = frames if frame == 0 else skip_to(frames, frame)
        if self.live:
            from mmface4d_stream.pipeline.dataset_recorder import DatasetRecorder
            from mmface4d_stream.pipeline.latest_frame import LatestFrameSource

            if self.record_dir and self.recorder is None:
                self.recorder = DatasetRecorder(self.record_dir, self.name, self.source.serials,
                                                self.source.intrinsics)
            self._latest = LatestFrameSource(frames, pace=self.pace, keep=self.keep,
                                             on_frame=None if self.recorder is None else self.recorder.write)
        else:
            self._frames = frames
        return True

    def _defers_color(self) -> bool:
        """Live without a recording, landmarks in other actors: MKV colour frames leave this process
        as JPEGs (~50 KB instead of 6 MB through the object store) and are decoded by the landmark
        actor that takes them; frame sets the graph never takes are never decoded."""
        return self.live and not self.record_dir

    def read(self, tick: int):
        """The next frame set (offline) or the newest one (live); None when the sequence is over."""
        if self._latest is not None:
            frame_set = self._latest.next()
        else:
            frame_set = next(self._frames, None)
        if frame_set is not None:
            self.inject_fault(frame_set.seq, frame_set.frame)
            self.read_count += 1
        return frame_set

    def stats(self) -> dict:
        latest = self._latest
        return {"read": self.read_count, "dropped": 0 if latest is None else latest.dropped,
                "captured": self.read_count if latest is None else self.start_frame + latest.read,
                "recorded": 0 if self.recorder is None else self.recorder.frames,
                "first_recorded_host_ns": None if self.recorder is None else self.recorder.first_host_ns}

    def stop(self) -> None:
        if self._latest is not None:
            self._latest.close()
            self._latest = None
        self._frames = None

    def close(self) -> list[str]:
        """Stop reading; finalize the recording (if any) and release devices. Returns recorded files."""
        self.stop()
        written = []
        if self.recorder is not None:
            written = [str(p) for p in self.recorder.close()]
            self.recorder = None
        if hasattr(self.source, "close"):
            self.source.close()
        self.source = None
        return written
