"""Item 6: a writer killed with SIGKILL leaves every frame it had encoded readable (flushed per packet)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from mmface4d_stream.cli import main
from mmface4d_stream.formats.depth_nut import DepthNutReader
from mmface4d_stream.formats.mesh_nut import MeshNutReader

REPO = Path(__file__).resolve().parents[2]

_WRITER = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from mmface4d_stream.formats.depth_nut import DepthNutWriter
    from mmface4d_stream.formats.mesh_nut import MeshNutWriter
    prefix, depth_path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    mesh = MeshNutWriter(prefix)
    depth = DepthNutWriter(depth_path, 640, 576)
    rng = np.random.default_rng(0)
    for k in range(n):
        mesh.write(rng.normal(scale=0.05, size=(5000, 3)) + 0.001 * k)
        depth.write(np.full((576, 640), 1000 + k, np.uint16))
    os.kill(os.getpid(), signal.SIGKILL)  # no close, no trailer, no Python cleanup
""")


def test_killed_mesh_and_depth_writers_keep_their_frames(tmp_path, capsys):
    prefix, depth_path, n = tmp_path / "rec", tmp_path / "d_0.nut", 12
    done = subprocess.run([sys.executable, "-c", _WRITER, str(prefix), str(depth_path), str(n)],
                          env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    with MeshNutReader(prefix) as reader:
        assert not reader.finalized
        # Before per-packet flushing: 0 (up to 256 KiB buffered per file). The reader leaves out the
        # last packet of an unfinished file (it cannot tell a whole one from a cut one): n - 1.
        kept = len(reader)
        assert kept >= n - 1
        last = reader[kept - 1]
    rng = np.random.default_rng(0)
    expected = [rng.normal(scale=0.05, size=(5000, 3)) + 0.001 * k for k in range(n)][kept - 1]
    assert np.abs(last - expected).max() < 1e-4
    with DepthNutReader(depth_path) as reader:
        frames = list(reader)
    assert len(frames) >= n - 1 and int(frames[-1][0, 0]) == 1000 + len(frames) - 1
    # The user's way in: decode --allow-truncated reads all of it.
    assert main(["decode", str(prefix), "--out", str(tmp_path / "a.npy"), "--allow-truncated"]) == 0
    assert np.load(tmp_path / "a.npy").shape == (kept, 5000, 3)


_COLOR_WRITER = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from mmface4d_stream.formats.color_mp4 import ColorMp4Writer
    from mmface4d_stream.pipeline.dataset_recorder import RECORDING_FRAGMENT_S
    writer = ColorMp4Writer(sys.argv[1], 320, 240, fps=30, fragment_s=RECORDING_FRAGMENT_S)
    for k in range(int(sys.argv[2])):
        writer.write(np.full((240, 320, 3), 3 * k, np.uint8))
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_killed_recording_colour_file_loses_at_most_half_a_second(tmp_path):
    """The live recorder's mp4 is fragmented: a plain mp4 without its trailer is unreadable."""
    from mmface4d_stream.formats.color_mp4 import ColorMp4Reader

    path, n = tmp_path / "rec_0.mp4", 50
    done = subprocess.run([sys.executable, "-c", _COLOR_WRITER, str(path), str(n)],
                          env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    with ColorMp4Reader(path) as reader:
        frames = list(reader)
    assert n - 15 <= len(frames) < n + 1  # 15 frames: one 0.5 s fragment at 30 fps
    assert abs(float(frames[-1].mean()) - 3 * (len(frames) - 1)) < 3
