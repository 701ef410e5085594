"""`mmface4d decode | encode | info | export` as a user runs them: exit codes, one-line errors, outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from mmface4d_stream.formats.mesh_nut import MeshNutReader, MeshNutWriter, mesh_nut_paths


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmface4d_stream.cli", *args], capture_output=True, text=True)


def _assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_decode_encode_roundtrip(mmface4d_sample_dir, tmp_path):
    out = tmp_path / "seq.npy"
    result = run_cli("decode", str(mmface4d_sample_dir / "reconstruct_filt"), "--vertices", "35709", "--out", str(out))
    assert result.returncode == 0, result.stderr
    array = np.load(out)
    assert array.shape == (67, 35709, 3) and array.dtype == np.float32
    reference = np.load(mmface4d_sample_dir / "reconstruct_filt_decoded_first_last.npy")
    np.testing.assert_allclose(array[[0, 66]], reference, atol=1e-6)
    result = run_cli("encode", str(out), "--out", str(tmp_path / "again"))
    assert result.returncode == 0, result.stderr
    with MeshNutReader(tmp_path / "again") as reader:
        assert len(reader) == 67
        np.testing.assert_allclose(reader[10], array[10], atol=(0.3 / 2**17) + 1e-6)


def test_info_on_every_kind(mmface4d_sample_dir, tmp_path):
    mesh = json.loads(run_cli("info", str(mmface4d_sample_dir / "reconstruct_filt")).stdout)
    assert mesh["kind"] == "mesh_sequence" and mesh["frames"] == 67 and mesh["vertices"] == 35709
    assert mesh["fps"] == 30.0 and mesh["duration_s"] == pytest.approx(67 / 30)
    low, high = np.array(mesh["bbox_m"]["min"]), np.array(mesh["bbox_m"]["max"])
    assert (high - low < 0.3).all() and 0.5 < low[2] < high[2] < 1.0  # a face ~0.7 m from the camera
    sequence = json.loads(run_cli("info", str(mmface4d_sample_dir / "000337")).stdout)
    assert sequence["kind"] == "dataset_sequence" and len(sequence["cameras"]) == 3 and sequence["frames"] == 67
    from mmface4d_stream.formats.depth_nut import DepthNutWriter
    with DepthNutWriter(tmp_path / "d_0.nut", 64, 48) as writer:
        writer.write(np.full((48, 64), 800, np.uint16))
    depth = json.loads(run_cli("info", str(tmp_path / "d_0.nut")).stdout)
    assert depth["kind"] == "depth_video" and depth["resolution"] == [64, 48] and depth["frames"] == 1


def test_export_obj_and_ply(mmface4d_sample_dir, tmp_path):
    prefix = tmp_path / "short"
    with MeshNutReader(mmface4d_sample_dir / "reconstruct_filt") as reader, MeshNutWriter(prefix) as writer:
        for index, vertices in enumerate(reader):
            writer.write(vertices)
            if index == 2:
                break
    for fmt, faces in (("obj", "bfm_faces.npy"), ("ply", "bfm_faces.pkl")):
        result = run_cli("export", str(prefix), "--faces", str(mmface4d_sample_dir / faces),
                         "--format", fmt, "--out", str(tmp_path / fmt))
        assert result.returncode == 0, result.stderr
        files = sorted((tmp_path / fmt).glob(f"*.{fmt}"))
        assert [f.name for f in files] == [f"frame_{i:06d}.{fmt}" for i in range(3)]
    obj_lines = (tmp_path / "obj" / "frame_000000.obj").read_text().splitlines()
    assert sum(line.startswith("v ") for line in obj_lines) == 35709
    assert sum(line.startswith("f ") for line in obj_lines) == 70789


def test_bad_inputs_give_one_line(mmface4d_sample_dir, tmp_path):
    _assert_one_line_error(run_cli("decode", str(tmp_path / "missing"), "--out", str(tmp_path / "x.npy")),
                           "missing", "missing_0.nut")
    _assert_one_line_error(run_cli("decode", str(mmface4d_sample_dir / "reconstruct_filt"), "--vertices", "5000",
                                   "--out", str(tmp_path / "x.npy")), "5000 vertices do not fit")
    nan = np.zeros((3, 10, 3), np.float32)
    nan[2, 4, 0] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    _assert_one_line_error(run_cli("encode", str(tmp_path / "nan.npy"), "--out", str(tmp_path / "n")),
                           "nan.npy (frame 2)", "NaN or inf")
    assert not mesh_nut_paths(tmp_path / "n")[0].exists()  # nothing under the final names
    np.save(tmp_path / "flat.npy", np.zeros((10, 3), np.float32))
    _assert_one_line_error(run_cli("encode", str(tmp_path / "flat.npy"), "--out", str(tmp_path / "f")),
                           "flat.npy", "(frames, vertices, 3)")
    _assert_one_line_error(run_cli("info", str(tmp_path / "nope")), "nope")
    _assert_one_line_error(run_cli("export", str(mmface4d_sample_dir / "reconstruct_filt"), "--faces",
                                   str(tmp_path / "none.npy"), "--out", str(tmp_path / "e")), "none.npy")


def test_truncated_triplet_needs_allow_truncated(tmp_path):
    prefix = tmp_path / "t"
    rng = np.random.default_rng(2)
    with MeshNutWriter(prefix) as writer:
        for _ in range(12):
            writer.write(rng.normal(0, 0.05, (3000, 3)).astype(np.float32))
    x_path = mesh_nut_paths(prefix)[0]
    x_path.write_bytes(x_path.read_bytes()[: x_path.stat().st_size * 2 // 3])
    _assert_one_line_error(run_cli("decode", str(prefix), "--out", str(tmp_path / "t.npy")), "truncated")
    result = run_cli("decode", str(prefix), "--allow-truncated", "--out", str(tmp_path / "t.npy"))
    assert result.returncode == 0, result.stderr
    assert 3 <= np.load(tmp_path / "t.npy").shape[0] < 12


def test_help_lists_the_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("decode", "encode", "info", "export"):
        assert command in result.stdout
