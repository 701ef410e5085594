"""Item 2 and 10: full disks, read-only and missing places give one line and exit 2, and leave nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mmface4d_stream.cli import main
from mmface4d_stream.errors import InputError
from mmface4d_stream.formats.mesh_nut import MeshNutWriter
from mmface4d_stream.formats.output_files import check_output_dir, reserve_npy
from mmface4d_stream.pipeline.sinks import MeshNutSink
from mmface4d_stream.frame_records import MeshFrame

REPO = Path(__file__).resolve().parents[2]
N_VERTICES = 2000
N_FRAMES = 24


@pytest.fixture(scope="module")
def mesh_prefix(tmp_path_factory) -> str:
    """24 frames of a 2000-vertex mesh (decoded: 576 KB)."""
    prefix = str(tmp_path_factory.mktemp("mesh") / "seq")
    rng = np.random.default_rng(1)
    base = rng.normal(scale=0.05, size=(N_VERTICES, 3)).astype(np.float32)
    with MeshNutWriter(prefix) as writer:
        for k in range(N_FRAMES):
            writer.write(base + 0.001 * k)
    return prefix


def _everything(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*"))


def _one_line_error(capsys, *fragments: str) -> str:
    # Progress bars (tqdm on stderr) are not messages.
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not re.search(r"\[\d\d:\d\d", line)]
    assert len(err) == 1, err
    for fragment in fragments:
        assert fragment in err[0], err[0]
    return err[0]


def test_decode_to_a_full_disk_is_one_line_not_sigbus(mesh_prefix, full_disk):
    """The issue's SIGBUS (exit 135): run as a process, so a regression cannot take pytest down with it."""
    disk = full_disk(128)
    out = disk / "all.npy"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "mmface4d_stream.cli", "decode", mesh_prefix, "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    lines = [line for line in done.stderr.splitlines() if line.strip() and "decode:" in line]
    assert lines == [f"mmface4d decode: error: {out}: cannot write (No space left on device)"]
    assert _everything(disk) == []


@pytest.mark.parametrize("command", ["encode", "smooth", "export"])
def test_writers_on_a_full_disk(command, mesh_prefix, full_disk, tmp_path, capsys):
    disk = full_disk(96)
    out = disk / "out"
    if command == "encode":
        array = tmp_path / "a.npy"
        rng = np.random.default_rng(2)
        np.save(array, rng.normal(size=(N_FRAMES, N_VERTICES, 3)).astype(np.float32))
        argv = ["encode", str(array), "--out", str(out)]
    elif command == "smooth":
        argv = ["smooth", "--file_path", mesh_prefix, "--out_path", str(out), "--tmp-dir", str(tmp_path)]
    else:
        faces = tmp_path / "faces.npy"
        np.save(faces, np.arange(3 * 100, dtype=np.int32).reshape(100, 3))
        argv = ["export", mesh_prefix, "--faces", str(faces), "--out", str(out)]
    assert main(argv) == 2
    _one_line_error(capsys, str(disk), "No space left on device")
    assert [p for p in _everything(disk) if p != "out"] == []  # no frames, no hidden partial files


def test_smooth_stage_file_on_a_full_disk(mesh_prefix, full_disk, tmp_path, capsys):
    """The staging map of `smooth` (the issue's 28 MB hidden leftover) is reserved up front."""
    disk = full_disk(64)
    assert main(["smooth", "--file_path", mesh_prefix, "--out_path", str(tmp_path / "s"),
                 "--tmp-dir", str(disk)]) == 2
    _one_line_error(capsys, "No space left on device")
    assert _everything(disk) == []
    assert not list(tmp_path.glob("*s_*.nut"))


def test_reserve_npy_fails_before_any_write(full_disk):
    disk = full_disk(64)
    with pytest.raises(InputError, match=r"big\.npy: cannot write \(No space left on device\)"):
        reserve_npy(disk / "big.npy", (100, 1000, 3), np.float32)
    assert _everything(disk) == []
    small = reserve_npy(disk / "small.npy", (2, 3), np.float32)
    small[:] = 7
    small.flush()
    del small
    assert np.load(disk / "small.npy").sum() == 42


def test_reconstruct_writer_on_a_full_disk_leaves_no_visible_file(full_disk):
    """The graph's and `reconstruct`'s sink: a triplet cut short by a full disk is removed."""
    disk = full_disk(96)
    sink = MeshNutSink(disk / "rec")
    rng = np.random.default_rng(3)
    with pytest.raises(InputError, match=r"rec_\d\.nut: cannot write \(No space left on device\)"):
        for k in range(200):
            sink.process(MeshFrame("s", k, 0, rng.normal(size=(N_VERTICES, 3)).astype(np.float32), False))
    sink.close(success=False)
    assert _everything(disk) == []


@pytest.mark.parametrize("command", ["decode", "encode", "smooth", "export", "reconstruct", "preprocess"])
def test_read_only_output_fails_before_work(command, mesh_prefix, read_only_dir, tmp_path, capsys):
    out = read_only_dir / "sub" / "out"
    argv = {
        "decode": ["decode", mesh_prefix, "--out", str(out)],
        "encode": ["encode", str(tmp_path / "a.npy"), "--out", str(out)],
        "smooth": ["smooth", "--file_path", mesh_prefix, "--out_path", str(out)],
        "export": ["export", mesh_prefix, "--faces", str(tmp_path / "f.npy"), "--out", str(out)],
        "reconstruct": ["reconstruct", "--file_path", str(tmp_path / "seq"), "--save_path", str(out)],
        "preprocess": ["preprocess", "--mkv", str(tmp_path / "a.mkv"), "--audio", str(tmp_path / "a.wav"),
                       "--out", str(out), "--name", "x"],
    }[command]
    np.save(tmp_path / "a.npy", np.zeros((2, 10, 3), np.float32))
    np.save(tmp_path / "f.npy", np.zeros((1, 3), np.int32))
    start = time.perf_counter()
    assert main(argv) == 2
    assert time.perf_counter() - start < 5.0
    _one_line_error(capsys, str(read_only_dir / "sub"), "Read-only file system")


def test_missing_and_blocked_folders(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        check_output_dir(tmp_path / "file" / "sub")
    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checked, not created
    check_output_dir(tmp_path / "new" / "deeper", create=True)
    assert (tmp_path / "new" / "deeper").is_dir()


def test_preprocess_on_a_full_disk(k4a_sample_dir, full_disk, tmp_path, capsys):
    """Writer threads hit the full disk: one line naming the file, and no partial files left."""
    from mmface4d_stream.formats.audio import write_wav
    from mmface4d_stream.k4a.mkv_reader import MkvReader
    from mmface4d_stream.k4a.mkv_writer import MkvWriter

    with MkvReader(k4a_sample_dir / "recording.mkv") as reader:
        calibration_raw = reader.calibration_raw
    mkv = tmp_path / "take.mkv"
    rng = np.random.default_rng(4)
    with MkvWriter(mkv, calibration_raw=calibration_raw, color_mode="MJPG_720P", ir=False) as writer:
        for k in range(6):
            writer.write(5_000_000 + k * 33_333, color=rng.integers(0, 255, (720, 1280, 3), np.uint8),
                         depth=np.full((576, 640), 1000, np.uint16))
    write_wav(tmp_path / "a.wav", np.zeros(16_000, np.float32))
    disk = full_disk(512)
    assert main(["preprocess", "--mkv", str(mkv), "--audio", str(tmp_path / "a.wav"), "--out", str(disk / "o"),
                 "--name", "s", "--no-vad"]) == 2
    _one_line_error(capsys, str(disk / "o"), "No space left on device")
    assert [p.name for p in (disk / "o").iterdir()] == []
