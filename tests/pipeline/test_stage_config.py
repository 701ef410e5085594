"""One config tree, one policy layer: the stage configs, sequence naming and meta readers shared by
`reconstruct` and the graph."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from graphs.config import GraphConfig, load_config
from mmface4d_stream.errors import ConfigError, InputError
from mmface4d_stream.formats.sequence import (DATASET_FPS, camera_file, mkv_session_name, sequence_cameras,
                                              sequence_names)
from mmface4d_stream.pipeline.latency_budget import latency_stats, p50_p95
from mmface4d_stream.pipeline.run import ReconstructOptions, reconstruct
from mmface4d_stream.pipeline.sinks import stage_latency
from mmface4d_stream.pipeline.stage_config import (FitStageConfig, LandmarkStageConfig, OutputConfig, PublishConfig,
                                                   SmoothStageConfig, SourceConfig, check_section)
from mmface4d_stream.smooth import DEFAULT_CUTOFF_HZ, DEFAULT_ORDER, CausalButterworth


def test_the_graph_sections_are_the_library_stage_configs():
    config = GraphConfig()
    assert isinstance(config.source, SourceConfig) and isinstance(config.fitter, FitStageConfig)
    assert isinstance(config.landmarks, LandmarkStageConfig) and isinstance(config.smoother, SmoothStageConfig)
    assert isinstance(config.output, OutputConfig) and isinstance(config.publish, PublishConfig)
    # The defaults of reconstruct and of the graph are the same objects' defaults.
    options = ReconstructOptions()
    assert config.fitter.stage_config() == options.fitter and config.smoother == options.smoother
    assert (options.smoother.cutoff_hz, options.smoother.order, options.output.fps) == (
        DEFAULT_CUTOFF_HZ, DEFAULT_ORDER, DATASET_FPS)
    # The actors receive the stage's settings alone, with the changes the graph makes.
    shared = load_config(None, {"fitter.face_model": "template", "fitter.torch_threads": 2}).fitter
    assert shared.stage_config(device="cuda") == FitStageConfig(torch_threads=2, device="cuda")
    assert type(shared.stage_config()) is FitStageConfig


def test_allowed_values_live_with_the_fields():
    with pytest.raises(ConfigError, match="fitter.face_model must be one of template, bfm"):
        check_section(FitStageConfig(face_model="flame"), "fitter")
    with pytest.raises(ConfigError, match="smoother.order must be positive"):
        check_section(SmoothStageConfig(order=0), "smoother")
    with pytest.raises(ConfigError, match="source.max_frames must be positive"):
        reconstruct(["nowhere"], "/nonexistent/out", ReconstructOptions(source=SourceConfig(max_frames=0)))
    check_section(PublishConfig(), "publish")  # the defaults pass


def test_each_config_builds_its_stage():
    smoother = SmoothStageConfig(cutoff_hz=4.0, order=3).build(25.0)
    assert (smoother.filter.cutoff_hz, smoother.filter.order, smoother.filter.fps) == (4.0, 3, 25.0)
    stage = FitStageConfig().build([np.eye(4), np.eye(4)])
    assert len(stage.rig_transforms) == 2 and FitStageConfig().load_model() is None
    with pytest.raises(InputError, match="needs --bfm-folder"):
        FitStageConfig(face_model="bfm").load_model()


def test_colour_crops_reach_the_fitter_only_for_depth_color():
    """The landmark stage copies each face crop's RGB only when the fitter's photometric term reads
    it (`fitter.raster: depth+color`); the fit stage hands it to the fitter's observation."""
    from mmface4d_stream.fit.synthetic import make_rig
    from mmface4d_stream.frame_records import FaceCrop, ObservedFrame

    assert not FitStageConfig().needs_color and not FitStageConfig(raster="depth").needs_color
    assert FitStageConfig(raster="depth+color").needs_color
    assert "color_crops" not in vars(LandmarkStageConfig())  # asked by the fitter's mode, not a setting
    camera = make_rig(1)[0][0]
    depth = np.full((40, 30), 700, np.uint16)
    rgb = np.full((40, 30, 3), 128, np.uint8)
    crop = FaceCrop(0, "s", True, 1.0, np.zeros((478, 2), np.float32), depth, camera, (500, 300), None, rgb)
    obs = FitStageConfig(raster="depth+color").build(None).observation(ObservedFrame("seq", 3, 0, [crop]))
    assert obs.cameras[0].color_rgb is rgb and obs.cameras[0].offset_px == (500, 300)
    plain = FitStageConfig().build(None).observation(ObservedFrame("seq", 3, 0, [dataclasses.replace(crop, color_rgb=None)]))
    assert plain.cameras[0].color_rgb is None


def test_filter_state_round_trip_continues_exactly():
    rng = np.random.default_rng(0)
    frames = rng.normal(size=(12, 5, 3))
    straight = CausalButterworth()
    expected = straight.filter(frames)
    first = CausalButterworth()
    first.filter(frames[:7])
    resumed = CausalButterworth()
    resumed.restore(first.state())
    np.testing.assert_array_equal(resumed.filter(frames[7:]), expected[7:])


def test_sequence_discovery_and_session_names(tmp_path):
    for name in ("000337_0.mp4", "000337_2.json", "000337_1.nut", "other_seq_1.mp4", "mesh_0.txt", "000337.wav"):
        (tmp_path / name).touch()
    assert camera_file("other_seq_1.mp4") == ("other_seq", 1) and camera_file("mesh_0.txt") is None
    assert sequence_names(tmp_path) == ["000337", "other_seq"]
    assert sequence_names(tmp_path, ("json",)) == ["000337"]
    assert sequence_cameras(tmp_path / "000337") == [0, 1, 2]
    assert sequence_cameras(tmp_path / "000337", ("mp4",)) == [0]
    assert sequence_cameras(tmp_path / "missing" / "x") == []
    assert mkv_session_name("/rec/session_7_000250714112.mkv") == "session_7"


def test_one_percentile_summary_and_old_meta_files():
    values = [1.0, 2.0, 3.0, 10.0]
    stats = latency_stats(values)
    assert stats == {"p50": 2.5, "p95": round(float(np.percentile(values, 95)), 2), "mean": 4.0, "n": 4}
    assert latency_stats([]) == {} and p50_p95([]) is None
    assert p50_p95(values) == {"p50": 2.5, "p95": round(float(np.percentile(values, 95)), 1)}
    old = {"stage_ms": {"fit": {"mean": 3.0, "p50": 2.0, "p95": 5.0}}}
    new = {"stage_latency_ms": {"fit": stats}}
    assert stage_latency(old) == old["stage_ms"] and stage_latency(new) == new["stage_latency_ms"]
    assert stage_latency({}) == {}


def test_graph_timeouts_are_config_fields():
    names = {f.name for f in dataclasses.fields(GraphConfig().ray)}
    assert {"restart_wait_s", "ping_timeout_s", "collect_timeout_s", "close_timeout_s",
            "publisher_close_timeout_s"} <= names
    with pytest.raises(ConfigError, match="ray.ping_timeout_s must be positive"):
        load_config(None, {"ray.ping_timeout_s": 0})


def test_live_warm_iterations_reach_the_fitter_and_bound_a_warm_frame():
    """`fitter.warm_iterations` (live.yaml: 2) caps the LM iterations of a warm-started frame,
    `fitter.fast_iterations` (live.yaml: 1) those of a hurried one, and `fitter.offset_cg_iterations`
    (live.yaml: 4) reaches the fitter; the defaults leave the fitter's own."""
    from mmface4d_stream.face.models import BfmModel
    from mmface4d_stream.fit.fitter import FaceFitter
    from mmface4d_stream.fit.synthetic import (frontal_pose, make_rig, synthetic_face_model, synthetic_frame,
                                               write_bfm_mat)

    live = load_config("live", {}).fitter.stage_config().fitter_config()
    assert (live.warm_iterations, live.offset_cg_iterations, live.fast_iterations) == (2, 4, 1)
    default = FitStageConfig().fitter_config()
    assert (default.warm_iterations, default.offset_cg_iterations, default.fast_iterations) == (4, 6, 2)
    with pytest.raises(ConfigError, match="positive"):
        load_config("live", {"fitter.warm_iterations": 0})
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        write_bfm_mat(synthetic_face_model(n_vertices=1500, n_id=8, n_exp=6, seed=1), folder)
        model = BfmModel.load(folder)
    rig = make_rig(1)
    rng = np.random.default_rng(0)
    alpha = (rng.normal(size=8) * 0.5).astype(np.float32)
    frames = [synthetic_frame(model, rig, *frontal_pose(5 + 4 * k, 0, 0, (0.0, 0.0, 0.65 + 0.01 * k)), alpha,
                              np.full(6, 0.3 * k, np.float32))[0] for k in range(3)]
    iterations = {}
    for cap in (1, None):
        fitter = FaceFitter(model, FitStageConfig(warm_iterations=cap).fitter_config())
        prev = fitter.fit(frames[0], fit_identity=True)
        warm = [fitter.fit(f, warm_start=prev, fit_identity=False) for f in frames[1:]]
        iterations[cap] = [w.iterations for w in warm]
    assert iterations[1] == [1, 1]
    assert max(iterations[None]) > 1  # a frame moved this far takes more than one iteration by default
    hurried = {}
    for cap in (1, None):
        fitter = FaceFitter(model, FitStageConfig(fast_iterations=cap).fitter_config())
        prev = fitter.fit(frames[0], fit_identity=True)
        fits = [fitter.fit(dataclasses.replace(f, hurry=True), warm_start=prev, fit_identity=False) for f in frames[1:]]
        assert all("hurried" in fit.flags for fit in fits)
        hurried[cap] = [fit.iterations for fit in fits]
    assert hurried[1] == [1, 1] and max(hurried[None]) == 2  # the default fast budget (2) is used here
