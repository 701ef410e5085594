"""Graph config: YAML files <-> dataclasses, defaults in one place, one clear line for a bad config."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from graphs.config import CONFIG_DIR, ConfigError, GraphConfig, config_from_dict, load_config

REPO = Path(__file__).resolve().parents[2]


def test_defaults_yaml_lists_every_key_with_the_dataclass_default():
    assert yaml.safe_load((CONFIG_DIR / "defaults.yaml").read_text()) == GraphConfig().to_dict()


@pytest.mark.parametrize("name", ["defaults", "1-cam", "3-cam", "live", "offline-cluster"])
def test_shipped_configs_load(name):
    config = load_config(name)
    assert isinstance(config, GraphConfig)
    # A config round-trips through YAML unchanged.
    assert config_from_dict(yaml.safe_load(config.to_yaml())) == config


def test_live_and_one_camera_configs_say_what_they_are():
    live = load_config("live")
    assert live.policy.mode == "live" and live.source.pace and live.publish.enabled and live.smoother.enabled
    assert load_config("1-cam").source.cameras == [1]
    assert load_config("3-cam", {"policy.max_inflight": 5}).policy.max_inflight == 5


@pytest.mark.parametrize("text, key", [
    ("policy:\n  max_inflght: 3\n", "policy.max_inflght"),
    ("polcy:\n  mode: live\n", "polcy"),
    ("policy:\n  mode: sometimes\n", "policy.mode"),
    ("policy:\n  max_inflight: three\n", "policy.max_inflight"),
    ("policy:\n  max_inflight: 0\n", "policy.max_inflight"),
    ("source:\n  cameras: [0, x]\n", "source.cameras[1]"),
    ("smoother:\n  cutoff_hz: 20\n", "smoother.cutoff_hz"),
    ("ray:\n  compiled: 2\n", "ray.compiled"),
    ("fitter:\n  face_model: bfm\n", "fitter.face_model"),
])
def test_bad_config_names_the_key(tmp_path, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert key in message and str(path) in message and "\n" not in message


def test_not_yaml_and_missing_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("policy: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(path)
    with pytest.raises(ConfigError, match="no config file 'nope'.*3-cam"):
        load_config("nope")


def test_overrides_are_checked_too():
    with pytest.raises(ConfigError, match="ray.max_restarts must not be negative"):
        load_config(None, {"ray.max_restarts": -1})
    assert dataclasses.asdict(load_config(None, {"faults.stage": "fitter"}).faults)["stage"] == "fitter"


def test_cli_reports_a_bad_config_in_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("policy:\n  max_inflight: -2\n")
    result = subprocess.run([sys.executable, str(REPO / "run_offline.py"), str(tmp_path), "--config", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "policy.max_inflight must be positive" in lines[0] and "Traceback" not in result.stderr


def test_shared_fitter_keys_and_the_plan_they_give():
    from graphs.frame_graph import shared_fitter_plan
    from graphs.runner import pipelines_at_once

    # YAML 1.1 reads on/off as booleans: the key takes them as the words.
    assert config_from_dict(yaml.safe_load("fitter:\n  shared: on\n")).fitter.shared == "on"
    assert config_from_dict(yaml.safe_load("fitter:\n  shared: off\n")).fitter.shared == "off"
    with pytest.raises(ConfigError, match="fitter.shared on needs ray.compiled false"):
        load_config(None, {"fitter.shared": "on", "ray.compiled": True})
    with pytest.raises(ConfigError, match="fitter.max_batch must be positive"):
        load_config(None, {"fitter.max_batch": 0})
    cluster = load_config("offline-cluster")
    assert cluster.fitter.shared == "auto"
    # auto: shared only where the cluster has GPUs, one actor per num_gpus GPUs, fitting on cuda.
    assert shared_fitter_plan(cluster, {"CPU": 64.0}) == (0, 0.0, "")
    assert shared_fitter_plan(cluster, {"CPU": 64.0, "GPU": 4.0}) == (4, 1.0, "cuda")
    assert shared_fitter_plan(load_config("offline-cluster", {"fitter.num_gpus": 0.5}), {"GPU": 2.0}) == (4, 0.5, "cuda")
    assert shared_fitter_plan(load_config(None, {"fitter.shared": "on"}), {"CPU": 2.0}) == (1, 0.0, "cpu")
    assert shared_fitter_plan(load_config(None), {"CPU": 2.0, "GPU": 8.0}) == (0, 0.0, "")  # default: off
    assert shared_fitter_plan(load_config("offline-cluster", {"ray.compiled": True}), {"GPU": 1.0}) == (0, 0.0, "")
    # A shared fitter reserves its CPU once: 64 CPUs give 60 lanes with 4 shared actors, 32 without.
    assert pipelines_at_once(cluster, {"CPU": 64.0, "GPU": 4.0}, False, shared_fitters=4) == 60
    assert pipelines_at_once(cluster, {"CPU": 64.0}, False) == 32


def test_ready_line_says_how_the_rig_was_obtained():
    from graphs.sequence_graph import ready_line

    startup = {"ready_s": 6.04, "actors_s": 5.0, "warm_up": {"seconds": 0.98},
               "rig": {"rig": "calibrated", "seconds": 8.04}}
    assert ready_line(startup) == "ready after 6.0 s (actors 5.0 s, warm-up 1.0 s, rig calibrated in 8.0 s)"
    assert ready_line(dict(startup, rig={"rig": "file", "seconds": None})).endswith("warm-up 1.0 s, rig from file)")
    assert ready_line({}) == "ready after 0.0 s (actors 0.0 s, warm-up 0.0 s)"


def test_a_one_camera_lane_keeps_its_own_frames_in_flight():
    """`policy.single_camera_inflight` (live.yaml: 3) applies to one-camera lanes only; unset, every
    lane keeps `max_inflight`."""
    live = load_config("live", {}).policy
    assert (live.inflight(1), live.inflight(3), live.inflight(2)) == (3, 2, 2)
    offline = load_config("1-cam", {}).policy
    assert offline.single_camera_inflight is None and offline.inflight(1) == offline.max_inflight == 3
    assert load_config("live", {"policy.single_camera_inflight": None}).policy.inflight(1) == 2
    with pytest.raises(ConfigError, match="positive"):
        load_config("live", {"policy.single_camera_inflight": 0})
