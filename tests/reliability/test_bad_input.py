"""Item 9: damaged recordings, bad intrinsics and a double Ctrl-C give one line, exit 2 (130), no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmface4d_stream.cli import main
from mmface4d_stream.errors import InputError
from mmface4d_stream.formats.intrinsics import IntrinsicsJson

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
import run_offline  # noqa: E402

GOOD = {"color_mode": "MJPG_1080P", "depth_mode": "NFOV_UNBINNED", "height": 1080, "width": 1920,
        "intrinsic_matrix": [900.0, 0.0, 0.0, 0.0, 900.0, 0.0, 960.0, 540.0, 1.0],
        "serial_number": "1", "stream_length_usec": 1000}


@pytest.mark.parametrize("matrix, message", [
    ("abc", "intrinsic_matrix must be a list of 9 numbers"),
    (None, "intrinsic_matrix must be a list of 9 numbers"),
    ([float("nan")] * 9, "NaN or infinite"),
    ([0.0] * 9, "focal lengths must be positive"),
])
def test_bad_intrinsic_matrix_is_one_line(tmp_path, matrix, message):
    path = tmp_path / "s_0.json"
    path.write_text(json.dumps(dict(GOOD, intrinsic_matrix=matrix)))  # json writes NaN as the bare token
    with pytest.raises(InputError, match=message):
        IntrinsicsJson.load(path)


def test_info_on_nan_intrinsics_is_an_error_not_consistent_nan_json(tmp_path, capsys):
    (tmp_path / "s_0.json").write_text(json.dumps(dict(GOOD, intrinsic_matrix=[float("nan")] * 9)))
    assert main(["info", str(tmp_path / "s")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "s_0.json: intrinsic_matrix holds NaN" in captured.err and "Traceback" not in captured.err


@pytest.mark.parametrize("content", ["garbage", "truncated"])
def test_run_offline_with_a_damaged_mkv_fails_before_ray(content, tmp_path, capsys):
    bad = tmp_path / "take_0.mkv"
    if content == "garbage":
        bad.write_bytes(os.urandom(100))
    else:
        sample = REPO.parent / "shared" / "samples" / "k4a_recording" / "recording.mkv"
        if not sample.is_file():
            pytest.skip(f"{sample} not found")
        with open(sample, "rb") as handle:
            bad.write_bytes(handle.read(300_000))
    start = time.perf_counter()
    assert run_offline.main([str(bad), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert time.perf_counter() - start < 10.0  # no Ray start
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0], err


def test_double_ctrl_c_exits_130_at_once():
    code = ("import os, signal, sys, threading, time\n"
            f"sys.path.insert(0, {str(REPO)!r})\n"
            "import run_offline\n"
            "stop = threading.Event()\n"
            "run_offline.install_stop_handler(stop)\n"
            "os.kill(os.getpid(), signal.SIGINT)\n"
            "time.sleep(0.2)\n"
            "assert stop.is_set()\n"
            "os.kill(os.getpid(), signal.SIGINT)\n"
            "time.sleep(5)\n"
            "sys.exit(0)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "aborted"
    assert "Traceback" not in done.stderr
