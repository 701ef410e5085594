"""Multi-recording synchronization (mmface4d_stream/k4a/sync.py)."""

from __future__ import annotations

import numpy as np
import pytest

from mmface4d_stream.errors import InputError
from mmface4d_stream.k4a.mkv_reader import MkvReader
from mmface4d_stream.k4a.mkv_writer import MkvWriter
from mmface4d_stream.k4a.sync import SessionSync

PERIOD = 33_333
SUB_DELAY = 160


@pytest.fixture(scope="module")
def calibration_raw(k4a_sample_dir) -> bytes:
    with MkvReader(k4a_sample_dir / "recording.mkv") as reader:
        return reader.calibration_raw


def _depth(frame: int, cam: int) -> np.ndarray:
    """A depth image that encodes (camera, frame) so the test can check the pairing."""
    image = np.full((576, 640), 1000 + frame, np.uint16)
    image[0, 0] = cam
    return image


def _record(path, calibration_raw, frames, *, mode, serial, sub_delay=0, jitter=0, start=10_000_000):
    """Write frames `frames` (indices on the master clock) of one camera."""
    with MkvWriter(path, calibration_raw=calibration_raw, color_mode=None, ir=False, serial_number=serial,
                   wired_sync_mode=mode, subordinate_delay_usec=sub_delay) as w:
        for k in frames:
            cam = int(serial[-1])
            w.write(start + k * PERIOD + sub_delay + (jitter if k % 2 else -jitter), depth=_depth(k, cam))
    return path


def test_three_cameras_with_drops_and_different_spans(tmp_path, calibration_raw):
    master = _record(tmp_path / "m.mkv", calibration_raw, range(0, 40), mode="MASTER", serial="SN0")
    # Subordinate 1 starts late (frame 3) and drops frames 10 and 11.
    sub1 = _record(tmp_path / "s1.mkv", calibration_raw, [k for k in range(3, 42) if k not in (10, 11)],
                   mode="SUBORDINATE", serial="SN1", sub_delay=SUB_DELAY, jitter=300)
    # Subordinate 2 ends early (frame 36) and drops frame 20.
    sub2 = _record(tmp_path / "s2.mkv", calibration_raw, [k for k in range(0, 37) if k != 20],
                   mode="SUBORDINATE", serial="SN2", sub_delay=2 * SUB_DELAY)
    # Given out of order: the master is found by its tag.
    with SessionSync([sub1, master, sub2]) as sync:
        assert sync.reference == 1
        assert sync.offsets_usec == [SUB_DELAY, 0, 2 * SUB_DELAY]
        assert sync.frame_count_estimate == 34  # frames 3..36
        sets = list(sync)
        report = sync.report
    assert [s.index for s in sets] == list(range(34))
    for s, k in zip(sets, range(3, 37)):
        assert s.timestamp_usec in (10_000_000 + k * PERIOD, 10_000_000 + k * PERIOD - 300)
        for cam_slot, cam in ((0, 1), (1, 0), (2, 2)):
            capture = s.captures[cam_slot]
            dropped = (cam == 1 and k in (10, 11)) or (cam == 2 and k == 20)
            if dropped:
                assert capture is None
            else:
                assert capture.depth[0, 0] == cam and capture.depth[1, 1] == 1000 + k
    assert report.frame_sets == 34 and report.complete == 31
    assert report.missing == [2, 0, 1]
    assert report.outside == [5, 6, 3]  # sub1: 37..41; master: 0..2 and 37..39; sub2: 0..2
    assert report.discarded == [0, 0, 0]
    assert "31 complete" in report.summary()


def test_require_all_yields_only_complete_sets(tmp_path, calibration_raw):
    master = _record(tmp_path / "m.mkv", calibration_raw, range(10), mode="MASTER", serial="SN0")
    sub = _record(tmp_path / "s.mkv", calibration_raw, [k for k in range(10) if k != 4],
                  mode="SUBORDINATE", serial="SN1", sub_delay=SUB_DELAY)
    with SessionSync([master, sub], require_all=True) as sync:
        sets = list(sync)
        assert len(sets) == 9 and all(s.complete for s in sets)
        assert [int(s.captures[0].depth[1, 1]) - 1000 for s in sets] == [0, 1, 2, 3, 5, 6, 7, 8, 9]
        assert sync.report.discarded == [1, 0] and sync.report.missing == [0, 1]


def test_single_recording(tmp_path, calibration_raw):
    path = _record(tmp_path / "one.mkv", calibration_raw, range(5), mode="STANDALONE", serial="SN0")
    with SessionSync([path]) as sync:
        assert [s.complete for s in sync] == [True] * 5


def test_no_overlap_is_an_error(tmp_path, calibration_raw):
    master = _record(tmp_path / "m.mkv", calibration_raw, range(5), mode="MASTER", serial="SN0")
    sub = _record(tmp_path / "s.mkv", calibration_raw, range(5), mode="SUBORDINATE", serial="SN1",
                  start=20_000_000)
    with pytest.raises(InputError, match="no overlapping device timestamps"):
        SessionSync([master, sub])


def test_recordings_of_different_sessions(tmp_path, calibration_raw):
    a = _record(tmp_path / "a.mkv", calibration_raw, range(3), mode="MASTER", serial="SN0")
    b = _record(tmp_path / "b.mkv", calibration_raw, range(3), mode="MASTER", serial="SN1")
    with pytest.raises(InputError, match="one MASTER"):
        SessionSync([a, b])
    c = _record(tmp_path / "c.mkv", calibration_raw, range(3), mode="SUBORDINATE", serial="SN0")
    with pytest.raises(InputError, match="same device SN0"):
        SessionSync([a, c])
    d = _record(tmp_path / "d.mkv", calibration_raw, range(3), mode="STANDALONE", serial="SN2")
    with pytest.raises(InputError, match="different sessions"):
        SessionSync([a, d])
    with pytest.raises(InputError, match="given twice"):
        SessionSync([a, a])
