"""Azure Kinect MKV recordings, read and written with PyAV (no Kinect SDK).

Layout of a recording (Azure Kinect "recording file format"): video tracks titled COLOR (MJPG,
BGRA, NV12 or YUY2 through `V_MS/VFW/FOURCC`), DEPTH and IR (`b16g`: 16-bit big-endian gray,
millimetres for depth), a subtitle track IMU, the attachment `calibration.json`, and tags:
K4A_COLOR_MODE / K4A_DEPTH_MODE / K4A_IR_MODE on their tracks, K4A_START_OFFSET_NS,
K4A_DEVICE_SERIAL_NUMBER, K4A_WIRED_SYNC_MODE, K4A_DEPTH_DELAY_NS (and K4A_SUBORDINATE_DELAY_NS
for subordinates) on the file. Timestamps are stored in microseconds (TimestampScale 1000 ns).

Device timestamps, as the Sensor SDK's playback defines them: the recorder subtracts the device
timestamp of the first sample it wrote (K4A_START_OFFSET_NS) from every block timestamp, so

    device_timestamp_usec = block_timestamp_usec + K4A_START_OFFSET_NS // 1000.

The SDK groups blocks of the COLOR/DEPTH/IR tracks into one capture when their *sync*
timestamps (the block timestamp plus the track's share of K4A_DEPTH_DELAY_NS: a positive delay
is added to COLOR, a negative one to DEPTH and IR) lie within half a frame period of the
earliest; `MkvReader` does the same, so a dropped image gives a capture without it.

`MkvWriter` lets FFmpeg mux the file and then patches, in place and with equal lengths, what
FFmpeg cannot write: the microsecond TimestampScale (FFmpeg always writes milliseconds; the
writer hands it microsecond values as if they were milliseconds, then rescales the file by
rewriting the one TimestampScale field, which scales cluster, block, cue and duration values
at once), the `b16g`/`MJPG` BITMAPINFOHEADERs with positive heights, and FFmpeg's own
DURATION/ENCODER tags (voided).
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple

import av
import numpy as np

from mmface4d_stream.errors import InputError
from mmface4d_stream.k4a import ebml
from mmface4d_stream.k4a.calibration import K4aCalibration
from mmface4d_stream.k4a.modes import ColorResolution, DepthMode

log = logging.getLogger(__name__)

COLOR_FORMATS = ("MJPG", "BGRA", "NV12", "YUY2")
IR_MODES = ("ACTIVE", "PASSIVE")
WIRED_SYNC_MODES = ("STANDALONE", "MASTER", "SUBORDINATE")
CAMERA_FPS = (5, 15, 30)
TRACK_NAMES = ("COLOR", "DEPTH", "IR")
CALIBRATION_FILENAME = "calibration.json"

# BITMAPINFOHEADER (40 bytes, little-endian): size, width, height, planes, bit count,
# compression FourCC, image size, x/y pixels per metre, colours used, colours important.
_BMP_HEADER = struct.Struct("<IiiHHIIiiII")
_FOURCC_BITS = {"MJPG": 24, "BGRA": 32, "NV12": 12, "YUY2": 16, "b16g": 16}


def _fourcc(code: str) -> int:
    return struct.unpack("<I", code.encode("ascii"))[0]


@dataclass(frozen=True)
class ColorMode:
    """A color track's pixel format and resolution, e.g. MJPG_1080P (tag K4A_COLOR_MODE)."""

    format: str
    resolution: ColorResolution

    @classmethod
    def parse(cls, text: str) -> ColorMode:
        """'MJPG_1080P' -> ColorMode('MJPG', RES_1080P); ValueError for anything else."""
        fmt, _, res = text.strip().upper().partition("_")
        if fmt not in COLOR_FORMATS or not res:
            raise ValueError(
                f"unknown color mode {text!r}; expected FORMAT_RESOLUTION with a format among "
                f"{', '.join(COLOR_FORMATS)} (e.g. 'MJPG_1080P')."
            )
        return cls(fmt, ColorResolution.parse(res))

    @property
    def name(self) -> str:
        return f"{self.format}_{self.resolution.value}"

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.resolution.size

    def __str__(self) -> str:
        return self.name


@dataclass
class K4aCapture:
    """The images of one Kinect capture; an image is None when its track is absent or dropped.

    color: (H, W, 3) uint8 RGB. depth: (H, W) uint16 millimetres (0 = invalid).
    ir: (H, W) uint16 raw infrared intensity. Timestamps are device timestamps in µs.
    """

    color: np.ndarray | None = None
    depth: np.ndarray | None = None
    ir: np.ndarray | None = None
    color_timestamp_usec: int | None = None
    depth_timestamp_usec: int | None = None
    ir_timestamp_usec: int | None = None
    index: int = 0

    @property
    def timestamp_usec(self) -> int:
        """The capture's device timestamp (µs): depth's, else IR's, else color's."""
        for ts in (self.depth_timestamp_usec, self.ir_timestamp_usec, self.color_timestamp_usec):
            if ts is not None:
                return ts
        raise ValueError("capture holds no image")


class ImuSample(NamedTuple):
    """One IMU sample: device timestamps (µs), accelerometer (3,) m/s², gyroscope (3,) rad/s."""

    acc_timestamp_usec: int
    acc: np.ndarray
    gyro_timestamp_usec: int
    gyro: np.ndarray


# The SDK's on-disk IMU sample: acc timestamp ns, acc xyz, gyro timestamp ns, gyro xyz (packed).
_IMU_SAMPLE = struct.Struct("<Q3fQ3f")


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


class MkvReader:
    """Replay an Azure Kinect MKV recording: iterate `K4aCapture`s, seek by device timestamp.

    `tracks` picks which of COLOR/DEPTH/IR are decoded and returned (default: all present);
    tracks missing from the file are simply absent. Use as a context manager.
    """

    def __init__(self, path: str | os.PathLike, tracks: Iterable[str] | None = None):
        self.path = Path(path)
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
    def has_color(self) -> bool:
        return "COLOR" in self._streams

    @property
    def has_depth(self) -> bool:
        return "DEPTH" in self._streams

    @property
    def has_ir(self) -> bool:
        return "IR" in self._streams

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
                frames = self._jpeg_decoder.decode(av.Packet(data))
                if not frames:
                    raise InputError("color image did not decode", path=self.path, frame=index)
                return frames[0].to_ndarray(format="rgb24")
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
        if "COLOR" in self.tracks and self.color_mode.format == "MJPG":  # type: ignore[union-attr]
            self._jpeg_decoder = av.CodecContext.create("mjpeg", "r")
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
                if name == "COLOR":
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


# ----------------------------------------------------------------------------------------------
@dataclass
class _WriterTrack:
    name: str
    stream: Any
    fourcc: str
    width: int
    height: int
    uid: int


def _new_track_uid(taken: set[int]) -> int:
    """A random non-zero 60-bit Matroska TrackUID, like the SDK's recorder draws."""
    while True:
        uid = int.from_bytes(os.urandom(8), "big") >> 4
        if uid and uid not in taken:
            return uid


class MkvWriter:
    """Write an Azure Kinect-style MKV: COLOR (MJPG), DEPTH and IR (b16g) tracks, K4A tags,
    the calibration.json attachment, microsecond device timestamps.

    `color_mode` e.g. 'MJPG_1080P' (None: no color track); `depth_mode` e.g. 'NFOV_UNBINNED'
    (None: no depth/IR); `ir` adds the IR track when depth is on. `calibration_raw` is the
    device's calibration.json bytes. `start_offset_usec` defaults to the first timestamp
    written (as the SDK's recorder does). With `atomic=True` the file is written under a
    temporary name beside `path` and renamed when `close()` succeeds.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        calibration_raw: bytes,
        color_mode: str | ColorMode | None = "MJPG_1080P",
        depth_mode: str | DepthMode | None = "NFOV_UNBINNED",
        ir: bool = True,
        fps: int = 30,
        serial_number: str = "",
        wired_sync_mode: str = "STANDALONE",
        depth_delay_usec: int = 0,
        subordinate_delay_usec: int = 0,
        start_offset_usec: int | None = None,
        jpeg_qscale: int = 3,
        atomic: bool = False,
    ):
        self.path = Path(path)
        if fps not in CAMERA_FPS:
            raise ValueError(f"fps must be one of {CAMERA_FPS}, got {fps}.")
        if wired_sync_mode.upper() not in WIRED_SYNC_MODES:
            raise ValueError(f"wired_sync_mode must be one of {WIRED_SYNC_MODES}, got {wired_sync_mode!r}.")
        if not calibration_raw:
            raise ValueError("calibration_raw (the device's calibration.json bytes) is required.")
        self.color_mode = ColorMode.parse(color_mode) if isinstance(color_mode, str) else color_mode
        if self.color_mode is not None and self.color_mode.format != "MJPG":
            raise ValueError(f"MkvWriter writes MJPG color only, got {self.color_mode}.")
        self.depth_mode = DepthMode.parse(depth_mode) if depth_mode is not None else None
        if self.color_mode is None and self.depth_mode is None:
            raise ValueError("a recording needs a color or a depth track.")
        self.fps = fps
        self.start_offset_usec = start_offset_usec
        self._tmp_path = self.path.with_name(f".{self.path.name}.partial") if atomic else self.path
        self._container = av.open(
            str(self._tmp_path), "w", format="matroska",
            options={"allow_raw_vfw": "1", "write_crc32": "0"},
        )
        c = self._container
        c.metadata["title"] = "Azure Kinect"
        c.metadata["K4A_DEPTH_DELAY_NS"] = str(int(depth_delay_usec) * 1000)
        c.metadata["K4A_WIRED_SYNC_MODE"] = wired_sync_mode.upper()
        if wired_sync_mode.upper() == "SUBORDINATE":
            c.metadata["K4A_SUBORDINATE_DELAY_NS"] = str(int(subordinate_delay_usec) * 1000)
        if serial_number:
            c.metadata["K4A_DEVICE_SERIAL_NUMBER"] = serial_number
        self._tracks: dict[str, _WriterTrack] = {}
        if self.color_mode is not None:
            w, h = self.color_mode.size
            self._add_track("COLOR", "MJPG", w, h, "yuvj422p",
                            {"K4A_COLOR_MODE": self.color_mode.name})
            self._jpeg = av.CodecContext.create("mjpeg", "w")
            self._jpeg.width, self._jpeg.height = w, h
            self._jpeg.pix_fmt = "yuvj422p"
            self._jpeg.time_base = Fraction(1, fps)
            self._jpeg.options = {"qmin": str(jpeg_qscale), "qmax": str(jpeg_qscale)}
        if self.depth_mode is not None:
            w, h = self.depth_mode.size
            if self.depth_mode != DepthMode.PASSIVE_IR:
                self._add_track("DEPTH", "b16g", w, h, "gray16be", {"K4A_DEPTH_MODE": self.depth_mode.value})
            else:
                c.metadata["K4A_DEPTH_MODE"] = self.depth_mode.value
            if ir or self.depth_mode == DepthMode.PASSIVE_IR:
                self._add_track("IR", "b16g", w, h, "gray16be", {
                    "K4A_IR_MODE": "PASSIVE" if self.depth_mode == DepthMode.PASSIVE_IR else "ACTIVE",
                })
        attachment = c.add_attachment(CALIBRATION_FILENAME, "application/octet-stream", bytes(calibration_raw))
        attachment.metadata["K4A_CALIBRATION_FILE"] = CALIBRATION_FILENAME
        self._started = False
        self._closed = False
        self._last_ts: dict[str, int] = {}
        self.frames_written = 0

    def _add_track(self, name: str, fourcc: str, width: int, height: int, pix_fmt: str, tags: dict) -> None:
        # Raw video through VFW, so FFmpeg writes V_MS/VFW/FOURCC as Kinect recordings do
        # (an mjpeg stream would become V_MJPEG); the header is fixed up after muxing.
        stream = self._container.add_stream("rawvideo", rate=self.fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.codec_tag = fourcc
        stream.metadata["title"] = name
        # The SDK tags each track with its TrackUID (K4A_COLOR_TRACK = "<uid>"). FFmpeg picks
        # its own UIDs, so we choose one here and patch FFmpeg's into it after muxing.
        uid = _new_track_uid(set(t.uid for t in self._tracks.values()))
        stream.metadata[f"K4A_{name}_TRACK"] = str(uid)
        for key, value in tags.items():
            stream.metadata[key] = value
        self._tracks[name] = _WriterTrack(name, stream, fourcc, width, height, uid)

    @property
    def tracks(self) -> tuple[str, ...]:
        return tuple(self._tracks)

    def write(
        self,
        timestamp_usec: int,
        *,
        color: np.ndarray | None = None,
        depth: np.ndarray | None = None,
        ir: np.ndarray | None = None,
        color_timestamp_usec: int | None = None,
    ) -> None:
        """Write one capture. Images: color (H, W, 3) uint8 RGB, depth (H, W) uint16 mm,
        ir (H, W) uint16; any may be None (a dropped image). `timestamp_usec` is the depth/IR
        device timestamp; color gets `color_timestamp_usec` (default: timestamp - depth delay, the
        delay being the depth capture time minus the color capture time)."""
        if self._closed:
            raise ValueError("MkvWriter is closed.")
        images = {"COLOR": color, "DEPTH": depth, "IR": ir}
        for name, image in images.items():
            if image is not None and name not in self._tracks:
                raise ValueError(f"this recording has no {name} track.")
        if all(image is None for image in images.values()):
            raise ValueError("a capture needs at least one image.")
        delay = int(self._container.metadata["K4A_DEPTH_DELAY_NS"]) // 1000
        stamps = {
            # K4A_DEPTH_DELAY_NS is depth capture time minus color capture time.
            "COLOR": int(color_timestamp_usec) if color_timestamp_usec is not None else int(timestamp_usec) - delay,
            "DEPTH": int(timestamp_usec),
            "IR": int(timestamp_usec),
        }
        if not self._started:
            if self.start_offset_usec is None:
                self.start_offset_usec = min(stamps[n] for n, im in images.items() if im is not None)
            self._container.metadata["K4A_START_OFFSET_NS"] = str(int(self.start_offset_usec) * 1000)
            self._started = True
        for name, image in images.items():
            if image is None:
                continue
            track = self._tracks[name]
            ts = stamps[name] - self.start_offset_usec
            if ts < 0:
                raise ValueError(f"{name} timestamp {stamps[name]} µs is before the start offset "
                                 f"{self.start_offset_usec} µs.")
            if name in self._last_ts and ts <= self._last_ts[name]:
                raise ValueError(f"{name} timestamps must increase ({stamps[name]} µs after "
                                 f"{self._last_ts[name] + self.start_offset_usec} µs).")
            self._last_ts[name] = ts
            if name == "COLOR":
                payload = self._encode_jpeg(image, track)
            else:
                image = np.asarray(image)
                if image.shape != (track.height, track.width) or image.dtype != np.uint16:
                    raise ValueError(f"{name} image must be uint16 ({track.height}, {track.width}), "
                                     f"got {image.dtype} {image.shape}.")
                payload = image.astype(">u2").tobytes()
            packet = av.Packet(payload)
            packet.stream = track.stream
            # FFmpeg's Matroska muxer counts in ms; handing it µs values keeps them exact, and
            # close() rescales the file to µs by patching TimestampScale.
            packet.time_base = Fraction(1, 1000)
            packet.pts = packet.dts = ts
            packet.duration = 1_000_000 // self.fps
            packet.is_keyframe = True
            self._container.mux(packet)
        self.frames_written += 1

    def write_capture(self, capture: K4aCapture) -> None:
        """Write a `K4aCapture` (e.g. from `MkvReader`), keeping its timestamps."""
        base = capture.depth_timestamp_usec if capture.depth_timestamp_usec is not None else capture.ir_timestamp_usec
        if base is None:
            delay = int(self._container.metadata["K4A_DEPTH_DELAY_NS"]) // 1000
            base = capture.color_timestamp_usec + delay  # type: ignore[operator]
        self.write(base, color=capture.color, depth=capture.depth, ir=capture.ir,
                   color_timestamp_usec=capture.color_timestamp_usec)

    def _encode_jpeg(self, image: np.ndarray, track: _WriterTrack) -> bytes:
        image = np.ascontiguousarray(image)
        if image.shape != (track.height, track.width, 3) or image.dtype != np.uint8:
            raise ValueError(f"color image must be uint8 ({track.height}, {track.width}, 3) RGB, "
                             f"got {image.dtype} {image.shape}.")
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuvj422p")
        packets = self._jpeg.encode(frame)
        if len(packets) != 1:
            raise RuntimeError(f"MJPEG encoder returned {len(packets)} packets for one frame")
        return bytes(packets[0])

    def close(self) -> None:
        """Finish the file (trailer, header fix-ups) and, when atomic, move it into place."""
        if self._closed:
            return
        self._closed = True
        if not self._started:
            # An empty recording still needs its start offset tag for readers.
            self._container.metadata["K4A_START_OFFSET_NS"] = str(int(self.start_offset_usec or 0) * 1000)
        self._container.close()
        _patch_kinect_layout(self._tmp_path, {t.name: t for t in self._tracks.values()})
        if self._tmp_path != self.path:
            os.replace(self._tmp_path, self.path)

    def abort(self) -> None:
        """Stop without finishing: the partial file is removed (atomic) or left as written."""
        if self._closed:
            return
        self._closed = True
        try:
            self._container.close()
        finally:
            if self._tmp_path != self.path:
                self._tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> MkvWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _patch_kinect_layout(path: Path, tracks: dict[str, _WriterTrack]) -> None:
    """Rewrite FFmpeg's output in place into the Kinect layout (see the module docstring)."""
    with open(path, "r+b") as f:
        top = ebml.read_tree(f, skip_clusters=True)
        segment = next(e for e in top if e.id == ebml.SEGMENT)
        info = segment.find(ebml.INFO)
        ebml.write_uint_in_place(f, info.find(ebml.TIMESTAMP_SCALE), 1000)
        uid_map: dict[int, int] = {}
        for entry in segment.find(ebml.TRACKS).find_all(ebml.TRACK_ENTRY):
            name = ebml.read_string(f, entry.find(ebml.TRACK_NAME))
            track = tracks.get(name)
            uid_el = entry.find(ebml.TRACK_UID)
            if track is not None and uid_el is not None:
                uid_map[ebml.read_uint(f, uid_el)] = track.uid
                ebml.write_uint_in_place(f, uid_el, track.uid)
            private = entry.find(ebml.CODEC_PRIVATE)
            if track is None or private is None or private.size < _BMP_HEADER.size:
                continue
            fields = list(_BMP_HEADER.unpack(ebml.read_payload(f, private)[:_BMP_HEADER.size]))
            fields[2] = track.height  # positive: top-down, as the SDK writes it
            fields[4] = _FOURCC_BITS[track.fourcc]
            fields[5] = _fourcc(track.fourcc)
            fields[6] = 0 if track.fourcc == "MJPG" else track.width * track.height * 2
            ebml.write_payload_in_place(f, ebml.Element(private.id, private.offset, private.data_offset,
                                                        _BMP_HEADER.size, []), _BMP_HEADER.pack(*fields))
        tags = segment.find(ebml.TAGS)
        for tag in tags.find_all(ebml.TAG) if tags else []:
            targets = tag.find(ebml.TARGETS)
            for target in targets.find_all(ebml.TAG_TRACK_UID) if targets else []:
                old = ebml.read_uint(f, target)
                if old in uid_map:
                    ebml.write_uint_in_place(f, target, uid_map[old])
            for simple in tag.find_all(ebml.SIMPLE_TAG):
                name_el = simple.find(ebml.TAG_NAME)
                if name_el is not None and ebml.read_string(f, name_el) in ("DURATION", "ENCODER"):
                    ebml.void_in_place(f, simple)


# ----------------------------------------------------------------------------------------------
def _intrinsics_dict(camera) -> dict:
    return {
        "width": camera.width, "height": camera.height,
        "fx": camera.fx, "fy": camera.fy, "cx": camera.cx, "cy": camera.cy,
    }


def describe_mkv(path: str | os.PathLike) -> dict:
    """A JSON-able summary of a Kinect recording: modes, frame count, duration (µs), serial
    number, sync mode, delays, and the pixel intrinsics of the cameras it recorded."""
    with MkvReader(path) as reader:
        stamps = list(reader.scan_timestamps())
        first = stamps[0] if stamps else {}
        last = stamps[-1] if stamps else {}
        per_track = {t: sum(1 for s in stamps if t in s) for t in reader.tracks}
        summary: dict[str, Any] = {
            "path": str(reader.path),
            "serial_number": reader.serial_number,
            "color_mode": reader.color_mode.name if reader.color_mode else "OFF",
            "depth_mode": reader.depth_mode.value if reader.depth_mode else "OFF",
            "ir_mode": reader.ir_mode or "OFF",
            "fps": reader.fps,
            "tracks": list(reader.tracks) + (["IMU"] if reader.has_imu else []),
            "frames": len(stamps),
            "frames_per_track": per_track,
            "duration_usec": reader.duration_usec,
            "first_timestamp_usec": min(first.values()) if first else None,
            "last_timestamp_usec": max(last.values()) if last else None,
            "start_offset_usec": reader.start_offset_usec,
            "wired_sync_mode": reader.wired_sync_mode,
            "depth_delay_usec": reader.depth_delay_usec,
            "subordinate_delay_usec": reader.subordinate_delay_usec,
        }
        calibration = reader.calibration
        cameras = {}
        if reader.color_mode is not None:
            cameras["color"] = _intrinsics_dict(calibration.color)
        if reader.depth_mode is not None:
            cameras["depth"] = _intrinsics_dict(calibration.depth)
        summary["intrinsics"] = cameras
        return summary
