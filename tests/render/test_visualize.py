"""`mmface4d visualize` / `render_mesh_video` and the render CLI."""

from __future__ import annotations

import numpy as np
import pytest

from mmface4d_stream.cli import main
from mmface4d_stream.errors import InputError
from mmface4d_stream.formats.color_mp4 import ColorMp4Reader
from mmface4d_stream.formats.mesh_nut import MeshNutReader, MeshNutWriter
from mmface4d_stream.render.subject import Expression, sample_subject
from mmface4d_stream.render.visualize import render_mesh_video


def _frames(path) -> list[np.ndarray]:
    with ColorMp4Reader(path) as reader:
        return [f for f in reader]


def test_real_sample_one_frame_per_mesh_frame(mmface4d_sample_dir, tmp_path):
    prefix = mmface4d_sample_dir / "reconstruct_filt"
    with MeshNutReader(prefix) as reader:
        n_frames = len(reader)
    video = render_mesh_video(prefix, tmp_path / "one", faces=mmface4d_sample_dir / "bfm_faces.npy",
                              size=128, progress=False)
    frames = _frames(video)
    assert len(frames) == n_frames == 67
    assert frames[0].shape == (128, 128, 3)
    # A grey face on white: a substantial non-white, non-black area.
    face = frames[0].min(axis=2) < 200
    assert 0.15 < face.mean() < 0.8
    assert not np.array_equal(frames[0], frames[-1])


def test_three_views_side_by_side_via_cli(mmface4d_sample_dir, tmp_path):
    prefix = mmface4d_sample_dir / "reconstruct_filt"
    rc = main(["visualize", "--file_path", str(prefix), "--out_path", str(tmp_path), "--views", "3",
               "--faces", str(mmface4d_sample_dir / "bfm_faces.pkl"), "--size", "96", "--max-frames", "4"])
    assert rc == 0
    frames = _frames(tmp_path / "output.mp4")
    assert len(frames) == 4 and frames[0].shape == (96, 288, 3)
    for k in range(3):
        tile = frames[0][:, 96 * k : 96 * (k + 1)]
        assert (tile.min(axis=2) < 200).mean() > 0.1


def test_bfm_without_faces_is_a_one_line_error(mmface4d_sample_dir, tmp_path, capsys):
    rc = main(["visualize", "--file_path", str(mmface4d_sample_dir / "reconstruct_filt"), "--out_path", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--faces" in err[0]


def test_faces_beside_the_sequence_and_mediapipe_default(tmp_path):
    subject = sample_subject(2)
    gt = tmp_path / "gt"
    gt.mkdir()
    with MeshNutWriter(gt / "mesh") as writer:
        for jaw in (0.0, 0.5, 1.0):
            v = subject.vertices(Expression(jaw=jaw), translation=[0, 0, 0.8])
            writer.write(v[: subject.n_face_vertices])
    np.save(gt / "faces.npy", subject.face_faces)
    frames = _frames(render_mesh_video(gt / "mesh", tmp_path / "a", size=64, progress=False))
    assert len(frames) == 3 and (frames[0].min(axis=2) < 200).mean() > 0.1

    with MeshNutWriter(tmp_path / "mp") as writer:
        writer.write(subject.vertices(translation=[0, 0, 0.8])[:468])
    frames = _frames(render_mesh_video(tmp_path / "mp", tmp_path / "b", size=64, progress=False))
    assert len(frames) == 1 and (frames[0].min(axis=2) < 200).mean() > 0.1

    with pytest.raises(InputError, match="--faces"):
        with MeshNutWriter(tmp_path / "odd") as writer:
            writer.write(np.random.default_rng(0).normal(size=(500, 3)))
        render_mesh_video(tmp_path / "odd", tmp_path / "c", progress=False)


def test_synth_cli_writes_dataset_and_ground_truth(tmp_path):
    rc = main(["synth", "--out", str(tmp_path), "--frames", "2", "--cameras", "1", "--seed", "3",
               "--name", "demo", "--no-mkv"])
    assert rc == 0
    for name in ("demo_0.mp4", "demo_0.nut", "demo_0.json", "demo.wav", "gt/faces.npy", "gt/cameras.json",
                 "gt/mesh_0.nut", "gt/mesh_1.nut", "gt/mesh_2.nut"):
        assert (tmp_path / name).is_file(), name
    assert not (tmp_path / "kinect").exists()
    assert (tmp_path / "gt" / "synth.json").is_file()
    stamp = (tmp_path / "demo_0.nut").stat().st_mtime_ns
    args = ["synth", "--out", str(tmp_path), "--frames", "2", "--cameras", "1", "--seed", "3", "--name", "demo",
            "--no-mkv", "--reuse"]
    assert main(args) == 0
    assert (tmp_path / "demo_0.nut").stat().st_mtime_ns == stamp  # same arguments: reused
    assert main(args[:8] + ["4"] + args[9:]) == 0  # other seed: rendered again
    assert (tmp_path / "demo_0.nut").stat().st_mtime_ns != stamp
    assert main(["synth", "--out", str(tmp_path), "--frames", "0"]) == 2
