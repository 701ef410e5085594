"""Issue 13, items 10 and 8: failed commands leave no partial files; truncated input needs --allow-truncated everywhere."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmface4d_stream.cli import main
from mmface4d_stream.formats.mesh_nut import MeshNutWriter

REPO = Path(__file__).resolve().parents[2]


def _sequence(prefix: Path, n: int = 10) -> None:
    rng = np.random.default_rng(5)
    with MeshNutWriter(prefix) as writer:
        for k in range(n):
            writer.write(rng.normal(scale=0.05, size=(300, 3)))


@pytest.fixture
def damaged(tmp_path, flip_in_packet) -> Path:
    """A triplet whose x file has a damaged frame 7 (its slice CRC fails)."""
    prefix = tmp_path / "in" / "seq"
    prefix.parent.mkdir()
    _sequence(prefix)
    flip_in_packet(Path(f"{prefix}_0.nut"), 7)
    return prefix


def test_failed_decode_leaves_no_partial_array(damaged, tmp_path, capsys):
    out = tmp_path / "out" / "all.npy"
    assert main(["decode", str(damaged), "--out", str(out)]) == 2
    assert "frame 7" in capsys.readouterr().err
    assert sorted(p.name for p in out.parent.iterdir()) == []


def test_failed_export_removes_the_frames_it_wrote(damaged, tmp_path, capsys):
    faces = tmp_path / "faces.npy"
    np.save(faces, np.array([[0, 1, 2]], np.int32))
    out = tmp_path / "objs"
    out.mkdir()
    (out / "mine.txt").write_text("the user's own file stays")
    assert main(["export", str(damaged), "--faces", str(faces), "--out", str(out)]) == 2
    assert "frame 7" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


def test_failed_encode_and_smooth_leave_nothing(tmp_path, damaged, capsys):
    array = np.zeros((4, 50, 3), np.float32)
    array[2, 3, 1] = np.nan
    np.save(tmp_path / "nan.npy", array)
    out = tmp_path / "enc"
    out.mkdir()
    assert main(["encode", str(tmp_path / "nan.npy"), "--out", str(out / "m")]) == 2
    assert "frame 2" in capsys.readouterr().err
    assert list(out.iterdir()) == []
    assert main(["smooth", "--file_path", str(damaged), "--out_path", str(out / "s")]) == 2
    assert list(out.iterdir()) == []


def test_smooth_refuses_truncated_input_without_the_flag(tmp_path, capsys):
    prefix = tmp_path / "cut"
    code = ("import os, signal, sys, numpy as np\n"
            "from mmface4d_stream.formats.mesh_nut import MeshNutWriter\n"
            "w = MeshNutWriter(sys.argv[1])\n"
            "for k in range(12): w.write(np.random.default_rng(k).normal(size=(300, 3)))\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run([sys.executable, "-c", code, str(prefix)], env=dict(os.environ, PYTHONPATH=str(REPO)),
                          timeout=120)
    assert done.returncode == -signal.SIGKILL
    assert main(["smooth", "--file_path", str(prefix), "--out_path", str(tmp_path / "s")]) == 2
    assert "--allow-truncated" in capsys.readouterr().err
    assert not list(tmp_path.glob("s_*.nut"))
    assert main(["smooth", "--file_path", str(prefix), "--out_path", str(tmp_path / "s"), "--allow-truncated"]) == 0
    assert all(Path(f"{tmp_path / 's'}_{a}.nut").is_file() for a in range(3))
