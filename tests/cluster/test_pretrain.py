"""The shipped toy base model: intact, made by `pretrain` with today's settings, better than random,
and pretraining deterministic (so the command in its provenance reproduces it on the same machine)."""

import hashlib
import json
from pathlib import Path

import torch

from cluster.config import load_config, parse_config
from cluster.jobs.pretrain import judge_policy, pretrain
from policy.wan import build_policy

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "assets" / "toy_base"


def test_shipped_base_is_intact_and_made_with_todays_settings():
    provenance = json.loads((BASE / "PROVENANCE.json").read_text())
    for name, digest in provenance["sha256"].items():
        assert hashlib.sha256((BASE / name).read_bytes()).hexdigest() == digest, name
    config = load_config(ROOT / "configs" / "toy.yaml")
    assert Path(config.policy.model_path).resolve() == BASE
    settings = provenance["settings"]
    assert settings["pretrain"] == {k: v for k, v in config.pretrain.model_dump().items() if k in settings["pretrain"]}
    assert config.pretrain.statistics_clips == 256  # the value the shipped model was made with and settings["clip"] == config.clip.model_dump()
    assert settings["seed"] == config.seed and settings["shift"] == config.sampling.shift
    assert provenance["base_eval"]["base"]["overall"] > 2 * provenance["base_eval"]["random_init"]["overall"]


def test_shipped_base_beats_a_random_model_on_the_toy_judges():
    config = load_config(ROOT / "configs" / "toy.yaml").model_copy()
    prompts = ["a red square moves left on a gray background", "two white circles move up on a navy background",
               "a yellow triangle moves right on a black background", "three green squares stay still on a brown background"]
    base = judge_policy(build_policy("tiny", str(BASE)), config, prompts, seed=0)
    random = judge_policy(build_policy("tiny", None, seed=0), config, prompts, seed=0)
    assert base["overall"] > random["overall"] and base["smoothness"] > random["smoothness"]


def test_pretraining_is_deterministic(tmp_path):
    def short_run(folder):
        config = parse_config({"policy": {"model_path": str(folder)}, "clip": {"num_frames": 5, "height": 24, "width": 24},
                               "pretrain": {"vae_steps": 2, "transformer_steps": 2, "dataset_clips": 16, "batch_size": 2,
                                            "transformer_batch_size": 4, "eval_prompts": 2,
                                            "statistics_clips": 8}})
        pretrain(config)
        return build_policy("tiny", str(folder)).state_dict()

    first, second = short_run(tmp_path / "a"), short_run(tmp_path / "b")
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert pretrain(parse_config({"policy": {"model_path": str(tmp_path / "a")}})) == tmp_path / "a"  # cached: returns at once
