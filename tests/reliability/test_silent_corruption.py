"""Item 7: damage in checksum-less (released-format) mesh files is found and named, not decoded silently."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from mmface4d_stream.cli import main
from mmface4d_stream.formats.mesh_nut import encode_coordinate_frame, frame_side
from mmface4d_stream.formats.mesh_verify import TemporalSpikes, coordinate_frame_problems, verify_mesh_sequence

N = 35709


@pytest.fixture
def released_copy(mmface4d_sample_dir, tmp_path) -> Path:
    """The sample's reconstruct_filt triplet (FFV1 version 1, no CRCs), copied to tmp to be damaged."""
    for axis in range(3):
        shutil.copy(mmface4d_sample_dir / f"reconstruct_filt_{axis}.nut", tmp_path / f"rel_{axis}.nut")
    return tmp_path / "rel"


def _flip_bit_in_packet(path: Path, index: int, at: float = 0.5, bit: int = 0x10) -> None:
    with av.open(str(path)) as container:
        packet = [p for p in container.demux(container.streams.video[0]) if p.size][index]
        payload, pos = bytes(packet), packet.pos
    raw = bytearray(path.read_bytes())
    start = raw.find(payload, pos)
    raw[start + int(len(payload) * at)] ^= bit
    path.write_bytes(bytes(raw))


def test_released_sample_is_clean(released_copy, capsys):
    report = verify_mesh_sequence(released_copy, N)
    assert report.frames == 67 and report.issues == []
    assert 0.001 < report.spike_threshold_m < 0.05


def test_a_flipped_bit_is_named_by_verify(released_copy, capsys):
    _flip_bit_in_packet(Path(f"{released_copy}_1.nut"), 30)
    report = verify_mesh_sequence(released_copy, N)
    # FFV1 version 1 carries coder state from frame to frame: the damage runs on for a few frames.
    damaged = sorted({issue.frame for issue in report.issues})
    assert damaged and damaged[0] == 30 and damaged[-1] < 40, damaged
    assert main(["info", str(released_copy), "--verify", "--vertices", str(N)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verify"]["ok"] is False and out["verify"]["issues"][0]["frame"] == 30
    assert main(["info", str(released_copy), "--verify", "--strict", "--vertices", str(N)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "rel (frame 30): damaged frame" in err[0]


def test_decode_warns_about_a_damaged_frame_and_strict_refuses_it(released_copy, tmp_path, capsys, caplog):
    _flip_bit_in_packet(Path(f"{released_copy}_1.nut"), 66)  # the last frame: nothing after it to spoil
    assert main(["decode", str(released_copy), "--out", str(tmp_path / "a.npy"), "--vertices", str(N)]) == 0
    assert "rel_1.nut (frame 66): damaged frame?" in caplog.text
    assert main(["decode", str(released_copy), "--out", str(tmp_path / "b.npy"), "--vertices", str(N),
                 "--strict"]) == 2
    assert "rel_1.nut (frame 66): damaged frame" in capsys.readouterr().err
    assert not list(tmp_path.glob("*b.npy*"))


def test_impossible_values_in_one_coordinate_frame():
    rng = np.random.default_rng(0)
    values = rng.normal(0.0, 0.05, 1000).astype(np.float32)
    side = frame_side(1000)
    frame = encode_coordinate_frame(values, side)
    assert coordinate_frame_problems(frame, 1000) == []
    low = frame.copy()
    low.reshape(-1)[4 + 10] = 3  # below the 5 cm margin's smallest q
    assert "outside" in coordinate_frame_problems(low, 1000)[0]
    padded = frame.copy()
    padded.reshape(-1)[-1] = 9
    assert "padding" in coordinate_frame_problems(padded, 1000)[0]
    header = frame.copy()
    header.reshape(-1)[0:2] = np.array([np.nan], "<f4").view("<u2")
    assert "not finite" in coordinate_frame_problems(header, 1000)[0]


def test_temporal_spike_is_the_damaged_frame_not_its_neighbours():
    rng = np.random.default_rng(1)
    base = rng.normal(0, 0.05, (500, 3)).astype(np.float32)
    spikes = TemporalSpikes()
    for k in range(40):
        frame = base + 0.002 * np.sin(k / 5.0)
        if k == 17:
            frame = frame.copy()
            frame[123] += 0.23  # the issue's 23 cm
        spikes.add(frame)
    found = spikes.spikes()
    assert [issue.frame for issue in found] == [17]
