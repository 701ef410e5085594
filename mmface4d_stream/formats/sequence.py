"""One MMFace4D sequence on disk: `<dir>/<name>_<cam>.{mp4,nut,json,pkl}` and `<dir>/<name>.wav`.

`DatasetSequence` finds which cameras and streams are present, counts frames per stream (by
demuxing, not decoding), loads the intrinsics and audio header, and reports inconsistencies:
streams of different lengths, an audio track of another duration, missing files.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import scipy.io.wavfile

from mmface4d_stream.errors import InputError
from mmface4d_stream.formats.color_mp4 import ColorMp4Reader
from mmface4d_stream.formats.depth_nut import DepthNutReader
from mmface4d_stream.formats.intrinsics import IntrinsicsJson
from mmface4d_stream.formats.landmarks import landmark_frame_count

STREAM_SUFFIXES = ("mp4", "nut", "json", "pkl")
# A camera's file of a dataset sequence: `<name>_<camera index>.<suffix>`.
CAMERA_FILE = re.compile(r"(?P<name>.+)_(?P<camera>\d+)\.(?P<suffix>\w+)")
# The MMFace4D capture rate, frames per second (the one definition: sources, outputs and checks use it).
DATASET_FPS = 30
# Audio may differ from the video span by up to a frame before we call it inconsistent.
AUDIO_TOLERANCE_S = 1.0 / DATASET_FPS


def camera_file(filename: str, suffixes: tuple[str, ...] = STREAM_SUFFIXES) -> tuple[str, int] | None:
    """(sequence name, camera index) of a dataset camera file name with one of `suffixes`, else None."""
    m = CAMERA_FILE.fullmatch(filename)
    if m is None or m["suffix"] not in suffixes:
        return None
    return m["name"], int(m["camera"])


def sequence_names(directory: str | os.PathLike, suffixes: tuple[str, ...] = ("json", "mp4")) -> list[str]:
    """Names of the dataset sequences in `directory` (not below): those with a camera file of one
    of `suffixes` (mesh triplets, `<prefix>_0.nut` only, do not count with the default)."""
    return sorted({parsed[0] for p in Path(directory).iterdir() if (parsed := camera_file(p.name, suffixes))})


def sequence_cameras(prefix: str | os.PathLike, suffixes: tuple[str, ...] = STREAM_SUFFIXES) -> list[int]:
    """Camera indices of the sequence `<dir>/<name>`: every `<name>_<cam>.<suffix>` beside the prefix."""
    prefix = Path(prefix)
    if not prefix.parent.is_dir():
        return []
    return sorted({parsed[1] for p in prefix.parent.glob(f"{glob.escape(prefix.name)}_*.*")
                   if (parsed := camera_file(p.name, suffixes)) and parsed[0] == prefix.name})


def mkv_session_name(path: str | os.PathLike) -> str:
    """The session name of an Azure Kinect recording `<session>_<device>.mkv` (the text before the
    last underscore): the recordings of one session share it, and it names the session's outputs."""
    return Path(path).stem.rsplit("_", 1)[0]


@dataclass
class CameraStreams:
    """What exists for one camera index, with frame counts for the time-based streams."""

    index: int
    color_path: Path | None = None
    depth_path: Path | None = None
    intrinsics_path: Path | None = None
    landmarks_path: Path | None = None
    color_frames: int | None = None
    depth_frames: int | None = None
    landmark_frames: int | None = None
    color_fps: float | None = None
    depth_fps: float | None = None
    depth_size: tuple[int, int] | None = None  # (width, height) pixels
    intrinsics: IntrinsicsJson | None = None

    def frame_counts(self) -> dict[str, int]:
        counts = {"color": self.color_frames, "depth": self.depth_frames, "landmarks": self.landmark_frames}
        return {k: v for k, v in counts.items() if v is not None}


@dataclass
class SequenceReport:
    """Consistency of a sequence: `ok` is False when any problem was found."""

    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class DatasetSequence:
    """An MMFace4D sequence given as `"<dir>/<name>"` (or a folder holding exactly one sequence)."""

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        if path.is_dir():
            # A sequence has per-camera json or mp4 files; mesh triplets (`<prefix>_0.nut` only) do not count.
            names = sequence_names(path)
            if len(names) != 1:
                raise InputError(f"folder holds {len(names)} sequences ({', '.join(names) or 'none'}); "
                                 "give <dir>/<name>", path)
            path = path / names[0]
        self.directory = path.parent
        self.name = path.name
        if not self.directory.is_dir():
            raise InputError("folder not found", self.directory)
        self.cameras: list[CameraStreams] = self._find_cameras()
        if not self.cameras:
            raise InputError(f"no files named {self.name}_<camera>.(mp4|nut|json|pkl)", self.directory)
        self.audio_path = self.directory / f"{self.name}.wav"
        self.audio_rate: int | None = None
        self.audio_duration_s: float | None = None
        if self.audio_path.is_file():
            try:
                rate, samples = scipy.io.wavfile.read(self.audio_path, mmap=True)
            except (ValueError, EOFError) as exc:
                raise InputError(f"not a readable WAVE file ({exc})", self.audio_path) from None
            self.audio_rate = int(rate)
            self.audio_duration_s = samples.shape[0] / float(rate)

    def _find_cameras(self) -> list[CameraStreams]:
        cameras = []
        for index in sequence_cameras(self.directory / self.name):
            cam = CameraStreams(index)
            base = self.directory / f"{self.name}_{index}"
            if (p := base.with_suffix(".mp4")).is_file():
                with ColorMp4Reader(p) as reader:
                    cam.color_path, cam.color_frames, cam.color_fps = p, len(reader), reader.fps
            if (p := base.with_suffix(".nut")).is_file():
                with DepthNutReader(p) as reader:
                    cam.depth_path, cam.depth_frames, cam.depth_fps = p, len(reader), reader.fps
                    cam.depth_size = (reader.width, reader.height)
            if (p := base.with_suffix(".json")).is_file():
                cam.intrinsics_path, cam.intrinsics = p, IntrinsicsJson.load(p)
            if (p := base.with_suffix(".pkl")).is_file():
                cam.landmarks_path, cam.landmark_frames = p, landmark_frame_count(p)
            cameras.append(cam)
        return cameras

    @property
    def camera_indices(self) -> list[int]:
        return [c.index for c in self.cameras]

    @property
    def n_frames(self) -> int:
        """Frames usable in every camera and stream (the shortest video stream)."""
        counts = [n for c in self.cameras for k, n in c.frame_counts().items() if k != "landmarks"]
        if not counts:
            counts = [n for c in self.cameras for n in c.frame_counts().values()]
        return min(counts) if counts else 0

    @property
    def fps(self) -> float:
        rates = [r for c in self.cameras for r in (c.color_fps, c.depth_fps) if r]
        return rates[0] if rates else float(DATASET_FPS)

    def camera(self, index: int) -> CameraStreams:
        for cam in self.cameras:
            if cam.index == index:
                return cam
        raise InputError(f"camera {index} not present (have {self.camera_indices})", self.directory / self.name)

    def report(self) -> SequenceReport:
        """Check that every camera has every stream and all of them have one length."""
        report = SequenceReport()
        have_video = any(c.color_path or c.depth_path for c in self.cameras)
        expected = ("color", "depth", "intrinsics") if have_video else ("intrinsics",)
        for cam in self.cameras:
            for kind in expected:
                if getattr(cam, f"{kind}_path") is None:
                    suffix = {"color": "mp4", "depth": "nut", "intrinsics": "json"}[kind]
                    report.problems.append(f"missing {self.name}_{cam.index}.{suffix}")
        if self.audio_duration_s is None:
            report.problems.append(f"missing {self.name}.wav")
        counts = {f"{self.name}_{c.index} {k}": n for c in self.cameras for k, n in c.frame_counts().items()}
        if len(set(counts.values())) > 1:
            detail = ", ".join(f"{k}: {n}" for k, n in counts.items())
            report.problems.append(f"streams have different frame counts ({detail})")
        for cam in self.cameras:
            for kind, rate in (("color", cam.color_fps), ("depth", cam.depth_fps)):
                if rate is not None and abs(rate - DATASET_FPS) > 0.01:
                    report.problems.append(f"{self.name}_{cam.index} {kind} runs at {rate:g} fps, expected 30")
            if cam.intrinsics and cam.depth_size and cam.depth_size != (cam.intrinsics.width, cam.intrinsics.height):
                report.problems.append(
                    f"{self.name}_{cam.index}.nut is {cam.depth_size[0]}x{cam.depth_size[1]} but its json says "
                    f"{cam.intrinsics.width}x{cam.intrinsics.height}")
        if counts and self.audio_duration_s is not None:
            video_s = max(counts.values()) / self.fps
            if abs(self.audio_duration_s - video_s) > AUDIO_TOLERANCE_S + 1e-9:
                report.problems.append(
                    f"audio lasts {self.audio_duration_s:.3f} s, video {video_s:.3f} s")
        return report

    def summary(self) -> dict:
        """JSON-able description: cameras, frame counts, fps, intrinsics, audio, problems."""
        report = self.report()
        return {
            "kind": "dataset_sequence",
            "path": str(self.directory / self.name),
            "cameras": [
                {"index": c.index, "frames": c.frame_counts(),
                 "intrinsics": None if c.intrinsics is None else
                 {"fx": c.intrinsics.fx, "fy": c.intrinsics.fy, "cx": c.intrinsics.cx, "cy": c.intrinsics.cy,
                  "width": c.intrinsics.width, "height": c.intrinsics.height,
                  "serial_number": c.intrinsics.serial_number}}
                for c in self.cameras
            ],
            "frames": self.n_frames,
            "fps": self.fps,
            "duration_s": self.n_frames / self.fps,
            "audio": None if self.audio_duration_s is None else
            {"rate": self.audio_rate, "duration_s": round(self.audio_duration_s, 6)},
            "consistent": report.ok,
            "problems": report.problems,
        }
