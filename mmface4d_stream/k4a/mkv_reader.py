"""Reading Azure Kinect MKV recordings with PyAV: captures grouped as the SDK groups them, seeking,
IMU samples (the layout: `k4a.mkv`)."""

from __future__ import annotations

import json
import logging
import os
import struct
from collections import deque
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple

import av
import numpy as np

from mmface4d_stream.errors import InputError
from mmface4d_stream.k4a import ebml
from mmface4d_stream.k4a.calibration import K4aCalibration
from mmface4d_stream.k4a.modes import ColorResolution, DepthMode
from mmface4d_stream.k4a.mkv import (
    CALIBRATION_FILENAME,
    CAMERA_FPS,
    TRACK_NAMES,
    WIRED_SYNC_MODES,
    ColorMode,
    ImuSample,
    K4aCapture,
    _IMU_SAMPLE,
)

log = logging.getLogger(__name__)


class _TrackEvent(NamedTuple):
    track: str  # COLOR, DEPTH or IR
    timestamp_usec: int  # device timestamp
    sync_usec: int  # device timestamp shifted by the track's share of the depth delay
    payload: Any


def group_captures(
    events: Iterable[_TrackEvent], tracks: tuple[str, ...], period_usec: int, lookahead_usec: int
) -> Iterator[dict[str, _TrackEvent]]:
    """Group time-ordered track events into captures as the SDK does (streaming).

    A group starts at the earliest pending sync timestamp t0 and takes, per track, the next
    event with sync timestamp < t0 + period/2. A group is released once every track has a
    pending event, or once the stream has moved `lookahead_usec` past t0 (a track with nothing
    pending by then dropped that image), so memory stays bounded by the lookahead.
    """
    pending: dict[str, deque[_TrackEvent]] = {t: deque() for t in tracks}
    half = period_usec // 2

    def release() -> dict[str, _TrackEvent]:
        t0 = min(q[0].sync_usec for q in pending.values() if q)
        group = {}
        for track, queue in pending.items():
            if queue and queue[0].sync_usec - t0 < half:
                group[track] = queue.popleft()
        return group

    latest = None
    for event in events:
        if event.track not in pending:
            continue
        pending[event.track].append(event)
        latest = event.sync_usec if latest is None else max(latest, event.sync_usec)
        while any(pending.values()):
            t0 = min(q[0].sync_usec for q in pending.values() if q)
            if all(pending.values()) or latest - t0 >= lookahead_usec:
                yield release()
            else:
                break
    while any(pending.values()):
        yield release()


def _check_not_truncated(path: Path) -> None:
    """InputError when the file is not EBML or its Segment runs past the end of the file."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            top = ebml.read_top_level(f)
    except ebml.EbmlError as exc:
        raise InputError(f"not a Matroska (MKV) file ({exc})", path=path) from None
    segments = [e for e in top if e.id == ebml.SEGMENT]
    if not segments:
        raise InputError("not a Matroska (MKV) file: no Segment element", path=path)
    if segments[0].end > size:
        raise InputError(
            f"file is truncated: the recording declares {segments[0].end} bytes, the file has {size}",
            path=path,
        )


def _tag_int(metadata: dict, name: str, default: int, path: Path) -> int:
    value = metadata.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise InputError(f"tag {name} holds {value!r}, not an integer", path=path) from None


def decode_jpeg_rgb(data: bytes) -> np.ndarray | None:
    """A JPEG (an MJPEG colour frame) as (H, W, 3) uint8 RGB with OpenCV's libjpeg-turbo, or None
    when it does not decode there. About half the CPU of FFmpeg's MJPEG decoder plus its RGB
    conversion on a full-HD Kinect frame (3.4 against 6.0 ms); the pixels differ from FFmpeg's by
    its chroma upsampling (mean 0.5 of 255)."""
    import cv2

    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)  # (OpenCV >= 4.10)


def decode_mjpeg(data: bytes, path: str | os.PathLike | None = None, frame: int | None = None) -> np.ndarray:
    """An MJPEG colour frame (`K4aCapture.color_jpeg`) as (H, W, 3) uint8 RGB: `decode_jpeg_rgb`,
    else FFmpeg's decoder (it also takes what libjpeg refuses, e.g. MJPEG without Huffman tables);
    InputError (naming `path` and `frame`) when neither decodes it."""
    rgb = decode_jpeg_rgb(data)
    if rgb is not None:
        return rgb
    try:
        frames = av.CodecContext.create("mjpeg", "r").decode(av.Packet(data))
    except av.error.FFmpegError as exc:
        raise InputError(f"color image does not decode ({exc})", path=path, frame=frame) from None
    if not frames:
        raise InputError("color image did not decode", path=path, frame=frame)
    return frames[0].to_ndarray(format="rgb24")


class MkvReader:
    """Replay an Azure Kinect MKV recording: iterate `K4aCapture`s, seek by device timestamp.

    `tracks` picks which of COLOR/DEPTH/IR are decoded and returned (default: all present);
    tracks missing from the file are simply absent. Use as a context manager.
    """

    def __init__(self, path: str | os.PathLike, tracks: Iterable[str] | None = None):
        self.path = Path(path)
        # MJPEG colour frames left undecoded in `K4aCapture.color_jpeg` (a live replay decodes only
        # the frame sets its graph takes: `decode_mjpeg`).
        self.defer_mjpeg = False
        if not self.path.is_file():
            raise InputError("recording not found", path=self.path)
        _check_not_truncated(self.path)
        try:
            self._container = av.open(str(self.path), "r")
        except av.error.FFmpegError as exc:
            raise InputError(f"not a readable Matroska (MKV) file ({exc})", path=self.path) from None
        try:
            self._init_metadata(tracks)
        except BaseException:
            self._container.close()
            raise
        self._seek_target_usec: int | None = None
        self._next_index = 0
        self._iterator: Iterator[K4aCapture] | None = None

    # -- metadata ---------------------------------------------------------------------------
    def _init_metadata(self, tracks: Iterable[str] | None) -> None:
        c = self._container
        if "matroska" not in c.format.name:
            raise InputError(f"not a Matroska (MKV) file (container {c.format.name})", path=self.path)
        meta = dict(c.metadata)
        self.metadata: dict[str, str] = meta
        self._streams: dict[str, av.video.stream.VideoStream] = {}
        for stream in c.streams.video:
            title = stream.metadata.get("title", "").upper()
            if title in TRACK_NAMES and title not in self._streams:
                self._streams[title] = stream
        if not self._streams:
            raise InputError("no COLOR, DEPTH or IR track: not an Azure Kinect recording", path=self.path)

        self.color_mode: ColorMode | None = None
        if "COLOR" in self._streams:
            text = self._streams["COLOR"].metadata.get("K4A_COLOR_MODE") or meta.get("K4A_COLOR_MODE")
            if text is None:
                raise InputError("COLOR track has no K4A_COLOR_MODE tag", path=self.path)
            try:
                self.color_mode = ColorMode.parse(text)
            except ValueError as exc:
                raise InputError(str(exc), path=self.path) from None
        self.depth_mode: DepthMode | None = None
        depth_text = None
        for name in ("DEPTH", "IR"):
            if name in self._streams:
                depth_text = depth_text or self._streams[name].metadata.get("K4A_DEPTH_MODE")
        depth_text = depth_text or meta.get("K4A_DEPTH_MODE")
        if depth_text is not None and depth_text.upper() != "OFF":
            try:
                self.depth_mode = DepthMode.parse(depth_text)
            except ValueError as exc:
                raise InputError(str(exc), path=self.path) from None
        elif "DEPTH" in self._streams or "IR" in self._streams:
            raise InputError("DEPTH/IR track without a K4A_DEPTH_MODE tag", path=self.path)
        self.ir_mode: str | None = None
        if "IR" in self._streams:
            self.ir_mode = self._streams["IR"].metadata.get("K4A_IR_MODE", "ACTIVE").upper()

        for name, stream in self._streams.items():
            expected = self.color_mode.size if name == "COLOR" else self.depth_mode.size  # type: ignore[union-attr]
            got = (stream.codec_context.width, stream.codec_context.height)
            if got != expected:
                mode = self.color_mode if name == "COLOR" else self.depth_mode
                raise InputError(
                    f"{name} track is {got[0]}x{got[1]} but its mode {mode} is {expected[0]}x{expected[1]}",
                    path=self.path,
                )

        self.serial_number: str = meta.get("K4A_DEVICE_SERIAL_NUMBER", "")
        self.wired_sync_mode: str = meta.get("K4A_WIRED_SYNC_MODE", "STANDALONE").upper()
        if self.wired_sync_mode not in WIRED_SYNC_MODES:
            raise InputError(f"unknown K4A_WIRED_SYNC_MODE {self.wired_sync_mode!r}", path=self.path)
        self.depth_delay_usec: int = _tag_int(meta, "K4A_DEPTH_DELAY_NS", 0, self.path) // 1000
        self.subordinate_delay_usec: int = (
            _tag_int(meta, "K4A_SUBORDINATE_DELAY_NS", 0, self.path) // 1000
            if self.wired_sync_mode == "SUBORDINATE" else 0
        )
        self.start_offset_usec: int = _tag_int(meta, "K4A_START_OFFSET_NS", 0, self.path) // 1000

        self.calibration_raw: bytes | None = None
        for stream in c.streams:
            if stream.type == "attachment" and stream.name == CALIBRATION_FILENAME:
                self.calibration_raw = bytes(stream.data)
                break
        if self.calibration_raw is None:
            raise InputError(f"no {CALIBRATION_FILENAME} attachment (device calibration) in the recording",
                             path=self.path)

        rates = set()
        for stream in self._streams.values():
            rate = stream.average_rate or stream.guessed_rate
            if rate:
                rates.add(round(float(rate)))
        if len(rates) > 1:
            raise InputError(f"tracks have different frame rates {sorted(rates)}", path=self.path)
        self.fps: int = rates.pop() if rates else 30
        if self.fps not in CAMERA_FPS:
            raise InputError(f"unsupported frame rate {self.fps} fps (Kinect: 5, 15 or 30)", path=self.path)

        selected = TRACK_NAMES if tracks is None else tuple(t.upper() for t in tracks)
        unknown = set(selected) - set(TRACK_NAMES)
        if unknown:
            raise ValueError(f"tracks must be among {TRACK_NAMES}, got {sorted(unknown)}.")
        self.tracks: tuple[str, ...] = tuple(t for t in TRACK_NAMES if t in self._streams and t in selected)
        if not self.tracks:
            raise InputError(f"none of the requested tracks {selected} is in the recording", path=self.path)
        self._calibration: K4aCalibration | None = None

    @property
    def period_usec(self) -> int:
        return 1_000_000 // self.fps

    @property
    def calibration(self) -> K4aCalibration:
        """The parsed device calibration for this recording's modes.

        A recording without color (or without depth) still carries both cameras'
        calibration; the missing camera's models are then built for 1080P (NFOV_UNBINNED).
        """
        if self._calibration is None:
            resolution = self.color_mode.resolution if self.color_mode else ColorResolution.RES_1080P
            depth_mode = self.depth_mode or DepthMode.NFOV_UNBINNED
            try:
                self._calibration = K4aCalibration.from_raw_json(self.calibration_raw, resolution, depth_mode)
            except (ValueError, KeyError, json.JSONDecodeError) as exc:
                raise InputError(f"unreadable {CALIBRATION_FILENAME} attachment ({exc})", path=self.path) from None
        return self._calibration

    @property
    def duration_usec(self) -> int:
        """Length of the recording in µs (the container's duration)."""
        return int(self._container.duration or 0)

    def _sync_shift(self, track: str) -> int:
        if self.depth_delay_usec > 0 and track == "COLOR":
            return self.depth_delay_usec
        if self.depth_delay_usec < 0 and track in ("DEPTH", "IR"):
            return -self.depth_delay_usec
        return 0

    # -- timestamps without decoding --------------------------------------------------------
    def scan_timestamps(self) -> Iterator[dict[str, int]]:
        """Per capture, {track: device timestamp µs}, read from block headers only (fast).

        Walks the Matroska clusters without reading image data, so it costs a few bytes per
        image; use it to count frames or plan synchronization before decoding.
        """
        yield from (
            {t: ev.timestamp_usec for t, ev in group.items()}
            for group in group_captures(self._scan_events(), self.tracks, self.period_usec, self._lookahead)
        )

    @property
    def _lookahead(self) -> int:
        return 2 * self.period_usec + abs(self.depth_delay_usec)

    def _scan_events(self) -> Iterator[_TrackEvent]:
        with open(self.path, "rb") as f:
            try:
                top = ebml.read_tree(f, skip_clusters=True)
            except ebml.EbmlError as exc:
                raise InputError(f"unreadable Matroska structure ({exc})", path=self.path) from None
            segment = next(e for e in top if e.id == ebml.SEGMENT)
            info = segment.find(ebml.INFO)
            scale_ns = 1_000_000
            if info is not None and info.find(ebml.TIMESTAMP_SCALE) is not None:
                scale_ns = ebml.read_uint(f, info.find(ebml.TIMESTAMP_SCALE))
            numbers: dict[int, str] = {}
            tracks_el = segment.find(ebml.TRACKS)
            for entry in tracks_el.find_all(ebml.TRACK_ENTRY) if tracks_el else []:
                name_el, num_el = entry.find(ebml.TRACK_NAME), entry.find(ebml.TRACK_NUMBER)
                if name_el is not None and num_el is not None:
                    name = ebml.read_string(f, name_el).upper()
                    if name in self.tracks:
                        numbers[ebml.read_uint(f, num_el)] = name
            for cluster in segment.find_all(ebml.CLUSTER):
                children = ebml.read_children(f, cluster)
                cluster_ts = 0
                for child in children:
                    if child.id == ebml.CLUSTER_TIMESTAMP:
                        cluster_ts = ebml.read_uint(f, child)
                        continue
                    block = child if child.id == ebml.SIMPLE_BLOCK else (
                        child.find(ebml.BLOCK) if child.id == ebml.BLOCK_GROUP else None)
                    if block is None:
                        continue
                    head = ebml.read_payload(f, ebml.Element(block.id, block.offset, block.data_offset,
                                                             min(block.size, 12), []))
                    b0 = head[0]
                    n_len = 8 - b0.bit_length() + 1
                    track_number = b0 & ((1 << (8 - n_len)) - 1)
                    for byte in head[1:n_len]:
                        track_number = (track_number << 8) | byte
                    rel = struct.unpack(">h", head[n_len:n_len + 2])[0]
                    name = numbers.get(track_number)
                    if name is None:
                        continue
                    ts_usec = (cluster_ts + rel) * scale_ns // 1000 + self.start_offset_usec
                    yield _TrackEvent(name, ts_usec, ts_usec + self._sync_shift(name), None)

    @property
    def has_imu(self) -> bool:
        return any(s.metadata.get("title", "").upper() == "IMU" for s in self._container.streams)

    def imu_samples(self) -> Iterator[ImuSample]:
        """The IMU track's samples in file order (an independent pass; captures keep their place).

        Unlike image blocks, IMU samples store absolute device timestamps (ns) in their payload.
        """
        with av.open(str(self.path), "r") as container:
            streams = [s for s in container.streams if s.metadata.get("title", "").upper() == "IMU"]
            if not streams:
                return
            for packet in container.demux(streams[0]):
                data = bytes(packet)
                for offset in range(0, len(data) - _IMU_SAMPLE.size + 1, _IMU_SAMPLE.size):
                    v = _IMU_SAMPLE.unpack_from(data, offset)
                    yield ImuSample(v[0] // 1000, np.array(v[1:4], np.float32), v[4] // 1000,
                                    np.array(v[5:8], np.float32))

    def count_captures(self) -> int:
        """Number of captures, from block headers (no decoding)."""
        return sum(1 for _ in self.scan_timestamps())

    # -- decoding ---------------------------------------------------------------------------
    def _packet_events(self) -> Iterator[_TrackEvent]:
        by_index = {s.index: name for name, s in self._streams.items() if name in self.tracks}
        streams = [self._streams[t] for t in self.tracks]
        try:
            for packet in self._container.demux(*streams):
                if packet.size == 0 or packet.pts is None:
                    continue
                name = by_index[packet.stream.index]
                ts = int(packet.pts * packet.time_base * 1_000_000) + self.start_offset_usec
                yield _TrackEvent(name, ts, ts + self._sync_shift(name), packet)
        except av.error.FFmpegError as exc:
            raise InputError(f"recording is damaged or truncated ({exc})", path=self.path) from None

    def _decode_color(self, packet: av.Packet, index: int) -> np.ndarray:
        mode = self.color_mode
        assert mode is not None
        width, height = mode.size
        data = bytes(packet)
        try:
            if mode.format == "MJPG":
                return decode_mjpeg(data, self.path, index)
            if mode.format == "BGRA":
                bgra = np.frombuffer(data, np.uint8, count=width * height * 4).reshape(height, width, 4)
                return np.ascontiguousarray(bgra[..., 2::-1])
            if mode.format == "NV12":
                nv12 = np.frombuffer(data, np.uint8, count=width * height * 3 // 2).reshape(height * 3 // 2, width)
                return av.VideoFrame.from_ndarray(nv12, format="nv12").to_ndarray(format="rgb24")
            yuyv = np.frombuffer(data, np.uint8, count=width * height * 2).reshape(height, width, 2)
            return av.VideoFrame.from_ndarray(yuyv, format="yuyv422").to_ndarray(format="rgb24")
        except (av.error.FFmpegError, ValueError) as exc:
            raise InputError(f"color image does not decode ({exc})", path=self.path, frame=index) from None

    def _decode_gray16(self, packet: av.Packet, index: int) -> np.ndarray:
        width, height = self.depth_mode.size  # type: ignore[union-attr]
        data = bytes(packet)
        if len(data) != width * height * 2:
            raise InputError(
                f"16-bit image holds {len(data)} bytes, expected {width * height * 2} for {width}x{height}",
                path=self.path, frame=index,
            )
        return np.frombuffer(data, ">u2").reshape(height, width).astype(np.uint16)

    def __iter__(self) -> Iterator[K4aCapture]:
        """Captures from the current position (the start, or the last `seek`) to the end.

        The reader is its own iterator: `read()` and iteration share one position."""
        if self._iterator is None:
            self._iterator = self._captures()
        return self._iterator

    def _captures(self) -> Iterator[K4aCapture]:
        target = self._seek_target_usec
        self._seek_target_usec = None
        for group in group_captures(self._packet_events(), self.tracks, self.period_usec, self._lookahead):
            capture = K4aCapture(index=self._next_index)
            for name, ev in group.items():
                if name == "COLOR":
                    capture.color_timestamp_usec = ev.timestamp_usec
                elif name == "DEPTH":
                    capture.depth_timestamp_usec = ev.timestamp_usec
                else:
                    capture.ir_timestamp_usec = ev.timestamp_usec
            if target is not None and capture.timestamp_usec < target:
                continue
            target = None
            for name, ev in group.items():
                if name == "COLOR" and self.defer_mjpeg and self.color_mode.format == "MJPG":
                    capture.color_jpeg = bytes(ev.payload)
                elif name == "COLOR":
                    capture.color = self._decode_color(ev.payload, capture.index)
                elif name == "DEPTH":
                    capture.depth = self._decode_gray16(ev.payload, capture.index)
                else:
                    capture.ir = self._decode_gray16(ev.payload, capture.index)
            self._next_index += 1
            yield capture

    def seek(self, device_timestamp_usec: int) -> None:
        """Position so that the next iteration starts at the first capture whose device
        timestamp is >= `device_timestamp_usec` (captures keep their recording-wide index
        only when reading from the start; after a seek `index` counts from the seek point)."""
        file_ts = int(device_timestamp_usec) - self.start_offset_usec
        margin = 2 * self.period_usec + abs(self.depth_delay_usec)
        try:
            self._container.seek(max(0, file_ts - margin), backward=True, any_frame=False)
        except av.error.FFmpegError as exc:
            raise InputError(f"cannot seek to {device_timestamp_usec} µs ({exc})", path=self.path) from None
        self._seek_target_usec = int(device_timestamp_usec)
        self._next_index = 0
        self._iterator = None

    def read(self) -> K4aCapture | None:
        """The next capture, or None at the end."""
        return next(iter(self), None)

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> MkvReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
