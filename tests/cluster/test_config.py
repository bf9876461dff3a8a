import subprocess
import sys
from pathlib import Path

import pytest

from cluster.config import ConfigError, load_config, parse_config, parse_overrides

ROOT = Path(__file__).resolve().parents[2]


def test_toy_config_loads_with_defaults():
    config = load_config(ROOT / "configs/toy.yaml")
    assert config.grpo.group_size == 8
    assert config.policy.preset == "tiny"


def test_unknown_key_fails_with_its_path():
    with pytest.raises(ConfigError, match=r"grpo\.grop_size: Extra inputs are not permitted"):
        parse_config({"grpo": {"grop_size": 4}})


def test_group_size_zero_fails_with_its_path():
    with pytest.raises(ConfigError, match=r"grpo\.group_size: Input should be greater than 1"):
        parse_config({"grpo": {"group_size": 0}})


def test_real_preset_requires_a_model_path_and_overrides_are_typed():
    with pytest.raises(ConfigError, match="model_path is required"):
        parse_config({"policy": {"preset": "wan2.1-t2v-1.3b"}})
    assert parse_overrides(["grpo.steps=3", "seed=2"]) == {"grpo": {"steps": 3}, "seed": 2}
    assert parse_config({}, parse_overrides(["grpo.steps=3"])).grpo.steps == 3


def test_job_rejects_bad_config_before_starting_anything(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("grpo:\n  group_size: 0\n")
    proc = subprocess.run([sys.executable, "-m", "cluster.jobs.grpo", "--config", str(bad)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "grpo.group_size" in proc.stderr
