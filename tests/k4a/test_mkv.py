"""Azure Kinect MKV replay and writing (mmface4d_stream/k4a/mkv*.py)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from skimage import data as skdata

from mmface4d_stream.errors import InputError
from mmface4d_stream.k4a import ebml
from mmface4d_stream.k4a.modes import ColorResolution, DepthMode
from mmface4d_stream.k4a.mkv import ColorMode
from mmface4d_stream.k4a.mkv_describe import describe_mkv
from mmface4d_stream.k4a.mkv_reader import MkvReader
from mmface4d_stream.k4a.mkv_writer import MkvWriter

REAL_START_OFFSET_USEC = 336_277  # K4A_START_OFFSET_NS 336277000
REAL_BLOCK_TIMESTAMP_USEC = 463_945  # the one capture's block timestamp in the file


@pytest.fixture(scope="module")
def calibration_raw(k4a_sample_dir) -> bytes:
    with MkvReader(k4a_sample_dir / "recording.mkv") as reader:
        return reader.calibration_raw


def _textured_color(width=1920, height=1080) -> np.ndarray:
    face = skdata.astronaut()  # 512x512 RGB
    reps = (height // 512 + 1, width // 512 + 1, 1)
    return np.ascontiguousarray(np.tile(face, reps)[:height, :width])


def _depth_frames(n, seed=0):
    rng = np.random.default_rng(seed)
    depth = [rng.integers(0, 65536, (576, 640), dtype=np.uint16) for _ in range(n)]
    ir = [rng.integers(0, 65536, (576, 640), dtype=np.uint16) for _ in range(n)]
    return depth, ir


# -- the real recording -------------------------------------------------------------------------
def test_real_recording_metadata(k4a_sample_dir):
    with MkvReader(k4a_sample_dir / "recording.mkv") as reader:
        assert reader.color_mode == ColorMode("MJPG", ColorResolution.RES_720P)
        assert reader.color_mode.size == (1280, 720)
        assert reader.depth_mode == DepthMode.NFOV_UNBINNED
        assert reader.ir_mode == "ACTIVE"
        assert reader.serial_number == "001514394512"
        assert reader.wired_sync_mode == "STANDALONE"
        assert reader.depth_delay_usec == 0
        assert reader.start_offset_usec == REAL_START_OFFSET_USEC
        assert reader.fps == 5  # DefaultDuration 200 ms
        assert reader.tracks == ("COLOR", "DEPTH", "IR")
        assert reader.count_captures() == 1
        attached = json.loads(reader.calibration_raw.rstrip(b"\0"))
        on_disk = json.loads((k4a_sample_dir / "calibration.json").read_bytes())
        assert attached == on_disk
        calib = reader.calibration
        assert calib.color.size == (1280, 720) and calib.depth.size == (640, 576)
        assert calib.serial_number in ("", "001514394512")


def test_real_recording_capture(k4a_sample_dir):
    with MkvReader(k4a_sample_dir / "recording.mkv") as reader:
        captures = list(reader)
    assert len(captures) == 1
    cap = captures[0]
    expected_ts = REAL_BLOCK_TIMESTAMP_USEC + REAL_START_OFFSET_USEC
    assert cap.timestamp_usec == cap.color_timestamp_usec == cap.ir_timestamp_usec == expected_ts
    assert cap.color.shape == (720, 1280, 3) and cap.color.dtype == np.uint8
    assert cap.depth.shape == (576, 640) and cap.depth.dtype == np.uint16
    assert cap.ir.shape == (576, 640) and cap.ir.dtype == np.uint16
    valid = cap.depth[cap.depth > 0]
    # NFOV unbinned: a room at 0.5-4 m, most pixels valid.
    assert valid.size > 0.6 * cap.depth.size
    assert 250 <= np.median(valid) <= 4000
    assert valid.max() <= 10000
    assert 20 < cap.color.mean() < 235 and cap.color.std() > 10


def test_real_recording_imu(k4a_sample_dir):
    with MkvReader(k4a_sample_dir / "recording.mkv") as reader:
        assert reader.has_imu
        samples = list(reader.imu_samples())
        assert len(list(reader)) == 1  # the IMU pass does not move the capture position
    assert len(samples) == 1
    imu = samples[0]
    assert imu.acc_timestamp_usec == imu.gyro_timestamp_usec == REAL_START_OFFSET_USEC
    assert 9.0 < float(np.linalg.norm(imu.acc)) < 10.6  # gravity, device at rest
    assert float(np.abs(imu.gyro).max()) < 0.1


def test_describe_real_recording(k4a_sample_dir):
    info = describe_mkv(k4a_sample_dir / "recording.mkv")
    json.dumps(info)
    assert info["frames"] == 1 and info["tracks"] == ["COLOR", "DEPTH", "IR", "IMU"]
    assert info["serial_number"] == "001514394512"
    assert info["color_mode"] == "MJPG_720P" and info["depth_mode"] == "NFOV_UNBINNED"
    assert info["wired_sync_mode"] == "STANDALONE" and info["depth_delay_usec"] == 0
    assert info["first_timestamp_usec"] == 800_222
    color, depth = info["intrinsics"]["color"], info["intrinsics"]["depth"]
    assert (color["width"], color["height"]) == (1280, 720)
    assert (depth["width"], depth["height"]) == (640, 576)
    assert 500 < color["fx"] < 700 and 600 < color["cx"] < 680
    assert 450 < depth["fx"] < 550 and 300 < depth["cx"] < 340


# -- writing --------------------------------------------------------------------------------
def test_round_trip_bit_exact_depth_ir(tmp_path, calibration_raw):
    depth, ir = _depth_frames(6)
    color = _textured_color()
    stamps = [2_000_000 + i * 33_333 for i in range(6)]
    path = tmp_path / "rt.mkv"
    with MkvWriter(path, calibration_raw=calibration_raw, color_mode="MJPG_1080P", serial_number="000123456789",
                   atomic=True) as writer:
        for i, ts in enumerate(stamps):
            writer.write(ts, color=np.roll(color, 16 * i, axis=1), depth=depth[i], ir=ir[i])
    assert not list(tmp_path.glob(".*partial"))
    with MkvReader(path) as reader:
        assert reader.start_offset_usec == stamps[0]
        assert reader.serial_number == "000123456789"
        assert reader.color_mode.name == "MJPG_1080P" and reader.fps == 30
        assert reader.calibration_raw == calibration_raw
        got = list(reader)
    assert [c.timestamp_usec for c in got] == stamps
    assert [c.color_timestamp_usec for c in got] == stamps
    for i, cap in enumerate(got):
        np.testing.assert_array_equal(cap.depth, depth[i])
        np.testing.assert_array_equal(cap.ir, ir[i])
        err = np.abs(cap.color.astype(int) - np.roll(color, 16 * i, axis=1)).mean()
        assert err < 4.0, err


def test_written_structure_matches_real_recording(tmp_path, calibration_raw, k4a_sample_dir):
    path = tmp_path / "s.mkv"
    depth, ir = _depth_frames(2)
    with MkvWriter(path, calibration_raw=calibration_raw, color_mode="MJPG_720P", serial_number="001514394512") as w:
        for i in range(2):
            w.write(1_000 + i * 33_333, color=_textured_color(1280, 720), depth=depth[i], ir=ir[i])
    real = _structure(k4a_sample_dir / "recording.mkv")
    ours = _structure(path)
    assert ours["timestamp_scale"] == real["timestamp_scale"] == 1000
    real_video = {k: v for k, v in real["tracks"].items() if k != "IMU"}
    assert set(ours["tracks"]) == set(real_video) == {"COLOR", "DEPTH", "IR"}
    for name, track in real_video.items():
        mine = ours["tracks"][name]
        for key in ("codec_id", "fourcc", "bit_count", "width", "height", "bmp_height", "size_image",
                    "default_duration_ns"):
            if key == "default_duration_ns":
                continue  # the sample was recorded at 5 fps, ours at 30
            assert mine[key] == track[key], (name, key)
        assert mine["tags"] == track["tags"], name
        # K4A_<NAME>_TRACK holds the track's own UID, as the SDK writes it.
        assert mine["uid_tag_matches"] and track["uid_tag_matches"]
    assert ours["default_durations"] == {33_333_333}
    assert real["default_durations"] == {200_000_000}
    for tag in ("K4A_DEPTH_DELAY_NS", "K4A_WIRED_SYNC_MODE", "K4A_DEVICE_SERIAL_NUMBER", "K4A_START_OFFSET_NS"):
        assert tag in real["global_tags"] and tag in ours["global_tags"], tag
    assert "DURATION" not in ours["all_tag_names"] and "ENCODER" not in ours["all_tag_names"]
    assert ours["attachments"] == real["attachments"] == [("calibration.json", "application/octet-stream",
                                                           "K4A_CALIBRATION_FILE")]


def _structure(path: Path) -> dict:
    with open(path, "rb") as f:
        top = ebml.read_tree(f)
        seg = next(e for e in top if e.id == ebml.SEGMENT)
        out = {"timestamp_scale": ebml.read_uint(f, seg.find(ebml.INFO).find(ebml.TIMESTAMP_SCALE)),
               "tracks": {}, "global_tags": set(), "all_tag_names": set(), "attachments": [],
               "default_durations": set()}
        uids = {}
        for entry in seg.find(ebml.TRACKS).find_all(ebml.TRACK_ENTRY):
            name = ebml.read_string(f, entry.find(ebml.TRACK_NAME))
            uid = ebml.read_uint(f, entry.find(ebml.TRACK_UID))
            uids[uid] = name
            t = {"codec_id": ebml.read_string(f, entry.find(ebml.CODEC_ID)), "tags": set(), "uid": uid}
            private = entry.find(ebml.CODEC_PRIVATE)
            if private is not None:
                bmp = struct.unpack("<IiiHHIIiiII", ebml.read_payload(f, private)[:40])
                t.update(width=bmp[1], bmp_height=bmp[2], bit_count=bmp[4],
                         fourcc=struct.pack("<I", bmp[5]).decode(), size_image=bmp[6])
                video = entry.find(ebml.VIDEO)
                t["height"] = ebml.read_uint(f, video.find(ebml.PIXEL_HEIGHT))
                out["default_durations"].add(ebml.read_uint(f, entry.find(ebml.DEFAULT_DURATION)))
            out["tracks"][name] = t
        attachment_uids = {}
        for att in seg.find(ebml.ATTACHMENTS).find_all(ebml.ATTACHED_FILE):
            attachment_uids[ebml.read_uint(f, att.find(ebml.FILE_UID))] = (
                ebml.read_string(f, att.find(ebml.FILE_NAME)), ebml.read_string(f, att.find(ebml.FILE_MIME_TYPE)))
        att_tags = {}
        for tag in seg.find(ebml.TAGS).find_all(ebml.TAG):
            targets = tag.find(ebml.TARGETS)
            track_uid = targets.find(ebml.TAG_TRACK_UID) if targets else None
            att_uid = targets.find(ebml.TAG_ATTACHMENT_UID) if targets else None
            for simple in tag.find_all(ebml.SIMPLE_TAG):
                tname = ebml.read_string(f, simple.find(ebml.TAG_NAME))
                value = ebml.read_string(f, simple.find(ebml.TAG_STRING))
                out["all_tag_names"].add(tname)
                if track_uid is not None:
                    track = out["tracks"][uids[ebml.read_uint(f, track_uid)]]
                    track["tags"].add(tname)
                    if tname.endswith("_TRACK"):
                        track["uid_tag_matches"] = int(value) == track["uid"]
                elif att_uid is not None:
                    att_tags[ebml.read_uint(f, att_uid)] = tname
                else:
                    out["global_tags"].add(tname)
        out["attachments"] = [(*v, att_tags.get(k)) for k, v in attachment_uids.items()]
        return out


def test_dropped_images_make_partial_captures(tmp_path, calibration_raw):
    depth, ir = _depth_frames(5)
    color = _textured_color(1280, 720)
    path = tmp_path / "drops.mkv"
    stamps = [500_000 + i * 33_333 for i in range(5)]
    with MkvWriter(path, calibration_raw=calibration_raw, color_mode="MJPG_720P") as w:
        for i, ts in enumerate(stamps):
            w.write(ts, color=None if i == 1 else color, depth=depth[i], ir=None if i == 3 else ir[i])
    with MkvReader(path) as reader:
        caps = list(reader)
        scanned = list(reader.scan_timestamps())
    assert len(caps) == 5
    assert caps[1].color is None and caps[1].color_timestamp_usec is None and caps[1].depth is not None
    assert caps[3].ir is None and caps[3].color is not None
    assert [c.timestamp_usec for c in caps] == stamps
    assert [set(s) for s in scanned] == [{"COLOR", "DEPTH", "IR"}, {"DEPTH", "IR"}, {"COLOR", "DEPTH", "IR"},
                                         {"COLOR", "DEPTH"}, {"COLOR", "DEPTH", "IR"}]


def test_depth_delay_groups_color_with_depth(tmp_path, calibration_raw):
    depth, ir = _depth_frames(4)
    color = _textured_color(1280, 720)
    path = tmp_path / "delay.mkv"
    with MkvWriter(path, calibration_raw=calibration_raw, color_mode="MJPG_720P", depth_delay_usec=-12_000) as w:
        for i in range(4):
            w.write(100_000 + i * 33_333, color=color, depth=depth[i], ir=ir[i])
    with MkvReader(path) as reader:
        assert reader.depth_delay_usec == -12_000
        caps = list(reader)
    assert len(caps) == 4
    for i, cap in enumerate(caps):
        assert cap.depth_timestamp_usec == 100_000 + i * 33_333
        assert cap.color_timestamp_usec == cap.depth_timestamp_usec + 12_000  # depth 12 ms before color
        np.testing.assert_array_equal(cap.depth, depth[i])


def test_seek_by_device_timestamp(tmp_path, calibration_raw):
    depth, ir = _depth_frames(30, seed=3)
    path = tmp_path / "seek.mkv"
    stamps = [7_000_000 + i * 33_333 for i in range(30)]
    with MkvWriter(path, calibration_raw=calibration_raw, color_mode=None) as w:
        for i, ts in enumerate(stamps):
            w.write(ts, depth=depth[i], ir=ir[i])
    with MkvReader(path) as reader:
        reader.seek(stamps[17])
        cap = reader.read()
        assert cap.timestamp_usec == stamps[17]
        np.testing.assert_array_equal(cap.depth, depth[17])
        assert reader.read().timestamp_usec == stamps[18]
        reader.seek(stamps[4] + 1)
        assert [c.timestamp_usec for c in reader] == stamps[5:]
        reader.seek(0)
        assert len(list(reader)) == 30


def test_color_only_and_depth_only(tmp_path, calibration_raw, k4a_sample_dir):
    full_path = k4a_sample_dir / "recording.mkv"
    color = _textured_color(1280, 720)
    path = tmp_path / "color.mkv"
    with MkvWriter(path, calibration_raw=calibration_raw, color_mode="MJPG_720P", depth_mode=None) as w:
        w.write(10, color=color)
        w.write(33_343, color=color)
    with MkvReader(path) as reader:
        assert reader.tracks == ("COLOR",) and reader.depth_mode is None
        caps = list(reader)
        assert [c.depth for c in caps] == [None, None] and caps[0].color.shape == (720, 1280, 3)
        assert reader.calibration.color.size == (1280, 720)
    info = describe_mkv(path)
    assert info["depth_mode"] == "OFF" and set(info["intrinsics"]) == {"color"}

    depth, _ = _depth_frames(2)
    path = tmp_path / "depth.mkv"
    with MkvWriter(path, calibration_raw=calibration_raw, color_mode=None, ir=False) as w:
        for i in range(2):
            w.write(1_000 + i * 33_333, depth=depth[i])
    with MkvReader(path) as reader:
        assert reader.tracks == ("DEPTH",) and reader.color_mode is None
        caps = list(reader)
        np.testing.assert_array_equal(caps[1].depth, depth[1])
        assert caps[0].color is None and caps[0].ir is None

    # Selecting tracks: only depth from the full real recording.
    with MkvReader(full_path, tracks=["depth"]) as reader:
        assert reader.tracks == ("DEPTH",)
        cap = reader.read()
        assert cap.color is None and cap.ir is None and cap.depth.shape == (576, 640)


def test_writer_rejects_bad_images(tmp_path, calibration_raw):
    with MkvWriter(tmp_path / "bad.mkv", calibration_raw=calibration_raw, color_mode="MJPG_720P",
                   atomic=True) as w:
        with pytest.raises(ValueError, match="uint16"):
            w.write(0, depth=np.zeros((576, 640), np.float32))
        with pytest.raises(ValueError, match="RGB"):
            w.write(0, color=np.zeros((1080, 1920, 3), np.uint8))
        w.write(100, depth=np.zeros((576, 640), np.uint16))
        with pytest.raises(ValueError, match="increase"):
            w.write(50, depth=np.zeros((576, 640), np.uint16))
    with pytest.raises(ValueError, match="fps"):
        MkvWriter(tmp_path / "x.mkv", calibration_raw=calibration_raw, fps=25)


def test_atomic_writer_leaves_nothing_on_error(tmp_path, calibration_raw):
    path = tmp_path / "err.mkv"
    with pytest.raises(RuntimeError):
        with MkvWriter(path, calibration_raw=calibration_raw, color_mode=None, atomic=True) as w:
            w.write(0, depth=np.zeros((576, 640), np.uint16))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


# -- bad inputs -----------------------------------------------------------------------------
def _small_recording(path: Path, calibration_raw: bytes) -> Path:
    depth, ir = _depth_frames(3)
    with MkvWriter(path, calibration_raw=calibration_raw, color_mode=None) as w:
        for i in range(3):
            w.write(1_000 + i * 33_333, depth=depth[i], ir=ir[i])
    return path


def test_not_an_mkv(tmp_path):
    text = tmp_path / "notes.mkv"
    text.write_text("hello, not a video\n" * 10)
    with pytest.raises(InputError, match="not a Matroska") as exc:
        MkvReader(text)
    assert exc.value.path == str(text)
    with pytest.raises(InputError, match="not found"):
        MkvReader(tmp_path / "missing.mkv")


def test_plain_matroska_is_not_a_kinect_recording(tmp_path):
    import av

    path = tmp_path / "plain.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "gray16le"
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64), np.uint16), format="gray16le")):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    with pytest.raises(InputError, match="not an Azure Kinect recording"):
        MkvReader(path)


def test_missing_calibration_attachment(tmp_path, calibration_raw):
    path = _small_recording(tmp_path / "nocal.mkv", calibration_raw)
    with open(path, "r+b") as f:
        seg = next(e for e in ebml.read_tree(f) if e.id == ebml.SEGMENT)
        ebml.void_in_place(f, seg.find(ebml.ATTACHMENTS))
    with pytest.raises(InputError, match="calibration.json"):
        MkvReader(path)


def test_unknown_mode(tmp_path, calibration_raw):
    path = _small_recording(tmp_path / "mode.mkv", calibration_raw)
    blob = path.read_bytes()
    assert blob.count(b"NFOV_UNBINNED") == 1
    path.write_bytes(blob.replace(b"NFOV_UNBINNED", b"NFOV_SIDEWAYS"))
    with pytest.raises(InputError, match="unknown Azure Kinect depth mode 'NFOV_SIDEWAYS'"):
        MkvReader(path)


def test_truncated_recording(tmp_path, calibration_raw):
    path = _small_recording(tmp_path / "cut.mkv", calibration_raw)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(InputError, match="truncated"):
        MkvReader(path)


def test_mjpeg_colour_decodes_with_libjpeg_and_falls_back_to_ffmpeg(tmp_path, calibration_raw, k4a_sample_dir,
                                                                   monkeypatch):
    import av

    from mmface4d_stream.k4a import mkv_reader

    # The real Kinect frame: OpenCV's decoder gives FFmpeg's picture up to chroma upsampling.
    with MkvReader(k4a_sample_dir / "recording.mkv") as reader:
        packet = next(bytes(ev.payload) for ev in reader._packet_events() if ev.track == "COLOR")
    with MkvReader(k4a_sample_dir / "recording.mkv") as reader:
        cap = next(iter(reader))
    ffmpeg = av.CodecContext.create("mjpeg", "r").decode(av.Packet(packet))[0].to_ndarray(format="rgb24")
    fast = mkv_reader.decode_jpeg_rgb(packet)
    assert fast.shape == ffmpeg.shape == (720, 1280, 3) and fast.dtype == np.uint8
    diff = np.abs(fast.astype(int) - ffmpeg.astype(int))
    assert diff.mean() < 1.5 and np.percentile(diff, 99) <= 6
    np.testing.assert_array_equal(cap.color, fast)  # the reader uses it
    assert mkv_reader.decode_jpeg_rgb(b"not a jpeg") is None
    # A frame libjpeg refuses goes to FFmpeg's decoder: same picture within the codec's error.
    path = tmp_path / "small.mkv"
    color = _textured_color(1280, 720)
    with MkvWriter(path, calibration_raw=calibration_raw, color_mode="MJPG_720P") as writer:
        writer.write(1_000, color=color)
    monkeypatch.setattr(mkv_reader, "decode_jpeg_rgb", lambda data: None)
    with MkvReader(path) as reader:
        got = next(iter(reader)).color
    assert got.shape == color.shape and np.abs(got.astype(int) - color.astype(int)).mean() < 4.0
