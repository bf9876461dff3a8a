"""Stage I end to end on the session's real Ray cluster: SFT steps, exact resume, frozen parts
untouched, and GRPO starting from SFT's checkpoint."""

import pytest
import ray
import torch

from cluster.config import parse_config
from cluster.sft import SFTDriver
from policy.wan import load_policy

pytestmark = pytest.mark.slow


def sft_config(run_dir, steps=3, **sft):
    return parse_config({
        "run_dir": str(run_dir),
        "clip": {"num_frames": 5, "height": 24, "width": 24},
        "policy": {"model_path": None, "motion_branch": {"hidden_channels": 8}},
        "pool": {"num_bundles": 2},
        "sft": {"steps": steps, "batch_size": 2, "learning_rate": 1e-3, "checkpoint_every": 1,
                "data": {"kinds": ["pan", "orbit", "fluid"]}, "physics": {"enabled": True}, **sft},
    })


def run_sft(config, resume=False):
    driver = SFTDriver(config, resume=resume)
    driver.setup()
    try:
        records = driver.train()
        weights, _ = ray.get(driver.learner.get_weights.remote())
        frozen = ray.get(driver.learner.__ray_call__.remote(lambda self: {
            name: tensor.cpu() for name, tensor in self.policy.state_dict().items()
            if name.startswith(("text_encoder.", "vae.encoder.", "vae.quant_conv."))}))
        return records, weights, frozen
    finally:
        driver.shutdown()


def test_sft_trains_both_levels_resumes_exactly_and_keeps_the_backbone_frozen(ray_cluster, tmp_path):
    full, full_weights, frozen = run_sft(sft_config(tmp_path / "full", steps=3))
    assert [r["step"] for r in full] == [1, 2, 3]
    for record in full:
        assert record["optimizer_steps"] == 1
        assert record["loss"] > 0 and record["sft/motion"] > 0 and record["sft/reconstruction"] > 0
        assert record["sft/weight_min"] >= 0.5 and record["sft/weight_max"] <= 2.0  # structure weights in bounds
        assert record["seconds/update"] > 0 and record["skipped_updates"] == 0
    assert any(record["sft/weight_std"] > 0 for record in full)  # distorted samples weigh more
    # the trained set: transformer, decoder level and branch; never the text encoder or VAE encoder
    assert any(n.startswith("transformer.") for n in full_weights) and any(n.startswith("motion_branch.") for n in full_weights)
    assert not any(n.startswith(("text_encoder.", "vae.encoder.")) for n in full_weights)
    base, _ = load_policy(sft_config(tmp_path / "x").policy)
    assert all(torch.equal(tensor, base.state_dict()[name]) for name, tensor in frozen.items())
    assert any(not torch.equal(full_weights[n], base.state_dict()[n]) for n in full_weights if n.startswith("motion_branch.fuse"))

    run_sft(sft_config(tmp_path / "split", steps=2))
    resumed, resumed_weights, _ = run_sft(sft_config(tmp_path / "split", steps=3), resume=True)
    assert [r["step"] for r in resumed] == [1, 2, 3]
    assert resumed[-1]["loss"] == full[-1]["loss"]
    assert all(torch.equal(resumed_weights[n], full_weights[n]) for n in full_weights)

    # Stage II starts from Stage I: the rollout's policy is SFT's final policy
    grpo = parse_config({**sft_config(tmp_path / "grpo").model_dump(mode="json"), "run_dir": str(tmp_path / "grpo"),
                         "policy": {"model_path": None, "motion_branch": {"hidden_channels": 8}, "init_from": str(tmp_path / "full")}})
    started, _ = load_policy(grpo.policy)
    assert all(torch.equal(started.state_dict()[n], full_weights[n]) for n in full_weights)
