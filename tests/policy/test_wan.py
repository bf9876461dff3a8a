"""The Wan policy adapter at tiny size: trainable selection, latents, save/load round trip."""

import pytest
import torch

from policy.wan import build_policy, sampling_sigmas, save_policy, select_trainable, trainable_state


@pytest.fixture(scope="module")
def policy():
    return build_policy("tiny", None, seed=0)


def test_full_trains_the_transformer_only(policy):
    params = select_trainable(policy, "full")
    assert sum(p.numel() for p in params) == sum(p.numel() for p in policy.transformer.parameters())
    assert not any(p.requires_grad for p in policy.vae.parameters())


def test_lora_trains_only_adapters_and_starts_as_the_base_model(policy):
    lora_policy = build_policy("tiny", None, seed=0)
    latents = torch.randn(1, *lora_policy.latent_shape(5, 24, 24), generator=torch.Generator().manual_seed(0))
    text = lora_policy.encode_prompts(["a red square moves left on a gray background"])
    with torch.no_grad():
        before = lora_policy.velocity(latents, torch.tensor(0.5), text)
    params = select_trainable(lora_policy, "lora", lora_rank=4)
    names = list(trainable_state(lora_policy))
    assert names and all("lora_" in n for n in names)
    assert sum(p.numel() for p in params) < 0.5 * sum(p.numel() for p in lora_policy.transformer.parameters())
    with torch.no_grad():
        after = lora_policy.velocity(latents, torch.tensor(0.5), text)
    torch.testing.assert_close(after, before)  # LoRA B starts at zero: the adapted model IS the base


def test_decoder_mode_trains_the_vae_decoder(policy):
    select_trainable(policy, "decoder")
    trainable = list(trainable_state(policy))
    assert trainable and all(n.startswith(("vae.decoder.", "vae.post_quant_conv.")) for n in trainable)
    with pytest.raises(ValueError, match="full, lora, decoder"):
        select_trainable(policy, "everything")


def test_encode_decode_shapes_and_sigmas(policy):
    videos = torch.rand(2, 9, 32, 32, 3)
    latents = policy.encode_video(videos)
    assert latents.shape == (2, *policy.latent_shape(9, 32, 32))
    decoded = policy.decode_latents(latents)
    assert decoded.shape == videos.shape and 0 <= decoded.min() and decoded.max() <= 1
    sigmas = sampling_sigmas(10, 3.0)
    assert sigmas.shape == (11,) and sigmas[0] == 1 and sigmas[-1] == 0 and (sigmas.diff() < 0).all()


def test_saved_policy_loads_through_the_real_model_path(policy, tmp_path):
    save_policy(policy, str(tmp_path / "base"))
    loaded = build_policy("tiny", str(tmp_path / "base"))
    for (name, a), (_, b) in zip(policy.transformer.state_dict().items(), loaded.transformer.state_dict().items()):
        assert torch.equal(a, b), name
    prompts = ["two blue circles move up on a black background"]
    assert torch.equal(policy.encode_prompts(prompts), loaded.encode_prompts(prompts))


def test_load_policy_builds_the_same_model_in_every_process_even_from_pretrained_weights(tmp_path):
    """A motion branch and LoRA adapters are random-initialised after a pretrained load (which does
    not seed the RNG): `load_policy` draws them under the config's seed, whatever the RNG state."""
    from policy.config import PolicyConfig
    from policy.wan import load_policy

    save_policy(build_policy("tiny", None, seed=0), str(tmp_path / "base"))
    config = PolicyConfig(model_path=str(tmp_path / "base"), trainable="lora", motion_branch={"hidden_channels": 4})
    torch.manual_seed(1)
    first = load_policy(config, seed=3)[0].state_dict()
    torch.manual_seed(2)
    state = torch.random.get_rng_state()
    second = load_policy(config, seed=3)[0].state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert any("lora_A" in name for name in first) and any(name.startswith("motion_branch.") for name in first)
