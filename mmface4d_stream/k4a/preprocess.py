"""Turn a session's Kinect MKVs and its microphone wav into MMFace4D dataset files.

The upstream `process_mkv` step, streaming: per camera i (the order of the MKVs given)

- `NAME_i.mp4`: color, H.264 (libx264, crf 10, yuv420p), at the recording's rate;
- `NAME_i.nut`: depth registered to the color camera, FFV1 gray16le, millimetres;
- `NAME_i.json`: the color camera's intrinsics in Open3D's Azure Kinect metadata layout;

and `NAME.wav`, 16 kHz mono float32. With voice-activity clipping (`audio.voice`: silero-vad,
speech of at least 500 ms) only frames [start, end + 2) are kept, start/end being the frames of
the first speech onset and the last speech offset, and the audio is clipped to the same span.

The released dataset is 30 fps; Kinect recordings at 5 or 15 fps are converted at their own rate
(the files and the json say so) with a warning, never resampled in time.

Frames come from `SessionSync`: the recordings are aligned by device timestamp and the audio's
first sample is taken to coincide with the first frame set. A camera that dropped an image in a
frame set repeats its previous image (zeros before its first), so every output has the same
frame count; repeats are counted and logged. Each camera's registration and encoding runs on
its own worker thread, at most two frame sets ahead of the reader, so memory does not grow
with the sequence length (only the audio track is held whole).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from mmface4d_stream.audio.voice import FPS, FrameSpan, SpeechSpanFn, silero_speech_span, speech_frame_span
from mmface4d_stream.errors import InputError
from mmface4d_stream.formats.audio import DATASET_RATE_HZ, load_audio_16k
from mmface4d_stream.k4a.mkv_reader import MkvReader
from mmface4d_stream.k4a.registration import DepthToColorRegistration
from mmface4d_stream.k4a.sync import SessionSync

log = logging.getLogger(__name__)

#: Frame sets handed to the camera workers before the reader waits (bounds memory).
_FRAMES_IN_FLIGHT = 2


class _CameraOutput:
    """One camera's registration and writers; `write` runs on that camera's worker thread."""

    def __init__(self, registration: DepthToColorRegistration, size: tuple[int, int]):
        self.registration = registration
        self.width, self.height = size
        self.color_writer = None
        self.depth_writer = None
        self.last_color: np.ndarray | None = None
        self.last_depth: np.ndarray | None = None
        self.repeated = 0

    def write(self, capture) -> None:
        """Write one frame; a dropped color or depth image repeats the previous one (zeros first)."""
        color = capture.color if capture is not None else None
        depth = capture.depth if capture is not None else None
        if color is None or depth is None:
            self.repeated += 1
        if color is None:
            color = self.last_color if self.last_color is not None else np.zeros(
                (self.height, self.width, 3), np.uint8)
        if depth is None:
            depth_c = self.last_depth if self.last_depth is not None else np.zeros(
                (self.height, self.width), np.uint16)
        else:
            depth_c = np.asarray(self.registration.depth_to_color(depth), dtype=np.uint16)
        self.color_writer.write(color)
        self.depth_writer.write(depth_c)
        self.last_color, self.last_depth = color, depth_c


@dataclass
class PreprocessResult:
    """Files written and frame bookkeeping."""

    files: list[Path]
    frames: int
    span: FrameSpan
    audio_samples: int
    repeated: list[int] = field(default_factory=list)  # per camera: images repeated for drops


def _intrinsics_json(reader: MkvReader, serial_fallback: str):
    from mmface4d_stream.formats.intrinsics import IntrinsicsJson

    color = reader.calibration.color
    return IntrinsicsJson(
        fx=float(color.fx), fy=float(color.fy), cx=float(color.cx), cy=float(color.cy),
        width=int(color.width), height=int(color.height),
        color_mode=reader.color_mode.name, depth_mode=reader.depth_mode.value,
        serial_number=reader.serial_number or serial_fallback,
        stream_length_usec=int(reader.duration_usec),
    )


def preprocess(
    mkv_paths: Sequence[str | os.PathLike],
    audio_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    name: str,
    *,
    vad: bool = True,
    speech_span: SpeechSpanFn = silero_speech_span,
    crf: int = 10,
    progress: bool = True,
) -> PreprocessResult:
    """Write NAME_i.mp4 / NAME_i.nut / NAME_i.json per camera and NAME.wav into `out_dir`.

    Every file is written under a temporary name and renamed when complete; an unwritable
    `out_dir` is an `InputError` before any decoding starts, and a run that fails (a full disk
    while finalizing the last file included) removes the files it had already completed.
    """
    files: list[Path] = []
    try:
        return _write_dataset_files(mkv_paths, audio_path, out_dir, name, files, vad=vad, speech_span=speech_span,
                                    crf=crf, progress=progress)
    except BaseException:
        from mmface4d_stream.formats.output_files import remove_quietly

        remove_quietly(*files)
        raise


def _write_dataset_files(mkv_paths, audio_path, out_dir, name: str, files: list[Path], *, vad: bool,
                         speech_span: SpeechSpanFn, crf: int, progress: bool) -> PreprocessResult:
    """`preprocess`, listing each output in `files` before it is written."""
    from tqdm import tqdm

    from mmface4d_stream.formats.audio import write_wav
    from mmface4d_stream.formats.color_mp4 import ColorMp4Writer
    from mmface4d_stream.formats.depth_nut import DepthNutWriter

    if not name or os.sep in name:
        raise InputError(f"invalid sequence name {name!r}")
    from mmface4d_stream.formats.output_files import check_output_dir

    out = check_output_dir(out_dir)
    with SessionSync(mkv_paths, tracks=("COLOR", "DEPTH")) as sync:
        for reader in sync.readers:
            if reader.color_mode is None or reader.depth_mode is None:
                raise InputError("preprocess needs a recording with both COLOR and DEPTH tracks", path=reader.path)
        fps = sync.readers[0].fps
        for reader in sync.readers[1:]:
            if reader.fps != fps:
                raise InputError(f"recording is {reader.fps} fps but {sync.readers[0].path.name} is {fps} fps",
                                 path=reader.path)
        if fps != FPS:
            log.warning("%s is %d fps: writing %d fps files (the released dataset is %d fps)",
                        sync.readers[0].path, fps, fps, FPS)
        samples = load_audio_16k(audio_path)
        span = (speech_frame_span(samples, DATASET_RATE_HZ, speech_span, path=audio_path, fps=fps) if vad
                else FrameSpan(0, None, fps))
        log.info("keeping frames %s", span)
        if span.start >= sync.frame_count_estimate:
            raise InputError(
                f"speech starts at frame {span.start}, after the recordings' {sync.frame_count_estimate} frames",
                path=audio_path,
            )
        n_cams = len(sync.readers)
        out.mkdir(parents=True, exist_ok=True)
        registrations = [r.calibration.registration for r in sync.readers]
        sizes = [r.calibration.color.size for r in sync.readers]
        cameras = [_CameraOutput(registrations[i], sizes[i]) for i in range(n_cams)]
        written = 0
        total = sync.frame_count_estimate
        if span.stop is not None:
            total = min(total, span.stop)
        total = max(0, total - span.start)
        with ExitStack() as stack:
            for i, (w, h) in enumerate(sizes):
                mp4 = out / f"{name}_{i}.mp4"
                nut = out / f"{name}_{i}.nut"
                cameras[i].color_writer = stack.enter_context(
                    ColorMp4Writer(mp4, w, h, fps=fps, crf=crf, atomic=True))
                cameras[i].depth_writer = stack.enter_context(DepthNutWriter(nut, w, h, fps=fps, atomic=True))
                files += [mp4, nut]
            # One worker thread per camera (registration and the encoders release the GIL);
            # each camera's frames stay in order on its own worker. Leaving this block waits for them.
            pools = [stack.enter_context(ThreadPoolExecutor(max_workers=1)) for _ in range(n_cams)]
            pending: deque[list[Future]] = deque()
            bar = stack.enter_context(tqdm(total=total, unit="frame", desc=name, disable=not progress))
            for frame_set in sync:
                if frame_set.index < span.start:
                    continue
                if span.stop is not None and frame_set.index >= span.stop:
                    break
                pending.append([
                    pools[i].submit(cameras[i].write, capture) for i, capture in enumerate(frame_set.captures)
                ])
                while len(pending) > _FRAMES_IN_FLIGHT:
                    for future in pending.popleft():
                        future.result()  # re-raises a worker's error here
                written += 1
                bar.update(1)
            while pending:
                for future in pending.popleft():
                    future.result()
        repeated = [c.repeated for c in cameras]
        if written == 0:
            raise InputError(f"no frames to write (kept span {span}, recordings hold {sync.report.frame_sets})",
                             path=mkv_paths[0])
        if any(repeated):
            log.warning("repeated previous images for dropped frames per camera: %s", repeated)
        for i, reader in enumerate(sync.readers):
            json_path = out / f"{name}_{i}.json"
            _intrinsics_json(reader, serial_fallback=str(i)).save(json_path)  # via a temporary file
            files.append(json_path)

    if span.stop is None:
        audio = samples  # --no-vad keeps everything: the whole audio, however long the video
    else:
        # Clip to the frames actually written (the recordings may end before the speech span).
        audio = samples[FrameSpan(span.start, span.start + written, fps).audio_slice(DATASET_RATE_HZ)]
    wav_path = out / f"{name}.wav"
    write_wav(wav_path, audio, DATASET_RATE_HZ)  # writes via a temporary file
    files.append(wav_path)
    return PreprocessResult(files, written, span, int(audio.shape[0]), repeated)
