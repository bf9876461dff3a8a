import subprocess
import sys
from pathlib import Path

import pytest

from cluster.config import ConfigError, load_config, parse_config, parse_overrides

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_config_validates_and_opens_with_its_launch_command(path):
    from reward_services.serve import load_server_config

    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("# ") and " --config configs/" in first_line, first_line
    if "reward_services.serve" in first_line:
        load_server_config(path)
    else:
        config = load_config(path)
        assert config.clip.num_frames >= 3


def test_critic_names_and_options_fail_before_anything_starts():
    with pytest.raises(ConfigError, match=r"rewards\.critics\.0: .*unknown critic 'toy_judge'"):
        parse_config({"rewards": {"critics": [{"name": "toy_judge"}]}})
    with pytest.raises(ConfigError, match=r"rewards\.critics\.0: .*critic 'motion'.*flow_backnd.*accepted options"):
        parse_config({"rewards": {"critics": [{"name": "motion", "options": {"flow_backnd": "raft"}}]}})


def test_pool_sizes_and_shares_are_checked():
    with pytest.raises(ConfigError, match="num_bundles .2. > reward_bundles .2."):
        parse_config({"pool": {"num_bundles": 2, "placement": "disaggregated", "reward_bundles": 2}})
    with pytest.raises(ConfigError, match="shares sum to 1.1 > 1"):
        parse_config({"pool": {"shares": {"rollout": 0.5, "learner": 0.4}}})
    with pytest.raises(ConfigError, match="prompts_per_step .1. must be >= the 2 main bundles"):
        parse_config({"pool": {"num_bundles": 2}, "grpo": {"prompts_per_step": 1}})
    with pytest.raises(ConfigError, match="clip.num_frames must be 1 \\+ 4k for preset 'wan2.1-t2v-1.3b'"):
        parse_config({"policy": {"preset": "wan2.1-t2v-1.3b", "random_init": True}, "clip": {"num_frames": 11}})


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
        parse_config({"policy": {"preset": "wan2.1-t2v-1.3b"}, "clip": {"num_frames": 17, "height": 240, "width": 416}})
    assert parse_overrides(["grpo.steps=3", "seed=2"]) == {"grpo": {"steps": 3}, "seed": 2}
    assert parse_config({}, parse_overrides(["grpo.steps=3"])).grpo.steps == 3


def test_job_rejects_bad_config_before_starting_anything(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("grpo:\n  group_size: 0\n")
    proc = subprocess.run([sys.executable, "-m", "cluster.jobs.grpo", "--config", str(bad)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "grpo.group_size" in proc.stderr
