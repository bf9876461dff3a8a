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


def test_a_config_extends_another_merging_mappings_and_replacing_lists(tmp_path):
    (tmp_path / "base.yaml").write_text("seed: 3\ngrpo: {steps: 7, group_size: 4}\nrewards:\n  critics: [{name: toy_judges}, {name: perceptual}]\n")
    (tmp_path / "variant.yaml").write_text("extends: base.yaml\ngrpo: {steps: 2}\nrewards:\n  critics: [{name: toy_judges}]\n")
    config = load_config(tmp_path / "variant.yaml", {"grpo": {"learning_rate": 1e-4}})
    assert (config.seed, config.grpo.steps, config.grpo.group_size, config.grpo.learning_rate) == (3, 2, 4, 1e-4)
    assert [critic.name for critic in config.rewards.critics] == ["toy_judges"]


def test_extends_names_a_missing_file_or_a_cycle_clearly(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="extends: 'nowhere.yaml' in .*a.yaml names no file"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("extends: c.yaml\n")
    (tmp_path / "c.yaml").write_text("extends: b.yaml\n")
    with pytest.raises(ConfigError, match="extends: cycle .*b.yaml -> .*c.yaml -> .*b.yaml"):
        load_config(tmp_path / "b.yaml")


def test_the_demo_config_is_the_toy_world_with_every_stage_two_extension_on():
    toy, demo = load_config(ROOT / "configs/toy.yaml"), load_config(ROOT / "configs/pipeline.yaml")
    assert demo.policy == toy.policy and demo.clip == toy.clip
    assert demo.sft == toy.sft.model_copy(update={"steps": 320, "checkpoint_every": 80})  # only longer
    assert set(demo.world.kinds) == set(demo.eval.kinds)  # GRPO trains on the kinds the evaluation asks about
    assert demo.grpo.ema_decay and demo.grpo.kl_target_deviation  # what holds GRPO's gains (issue 11)
    grpo = demo.grpo
    assert grpo.joint_reward.mode == "min_norm" and grpo.bpgo.enabled and grpo.vipo.lam > 0 and grpo.self_paced.enabled
    assert set(grpo.self_paced.reward_phases) == set(demo.rewards.components) > set(toy.rewards.components)
