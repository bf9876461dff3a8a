"""The physics-aware motion branch (report §2.4): zero-init identity, decoder-level training only,
causal chunked decoding, state round trip."""

import pytest
import torch

from algorithms.sft import motion_errors, per_sample_mse
from policy.motion_branch import (
    MotionBranch,
    attach_motion_branch,
    decode_with_flow,
    detach_motion_branch,
    motion_branch_parameters,
)
from policy.wan import build_policy, trainable_state
from toyworld.world import FLUID_SHAPE, SceneSpec, render

FROZEN = ("transformer", "text_encoder", "vae.encoder", "vae.quant_conv")


def _latents(policy, batch=2, frames=9, seed=0):
    return torch.randn(batch, *policy.latent_shape(frames, 32, 32), generator=torch.Generator().manual_seed(seed))


def _snapshot(module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


@pytest.fixture(scope="module")
def base():
    policy = build_policy("tiny", None, seed=0)
    latents = _latents(policy)
    with torch.no_grad():
        return policy, latents, policy.decode_latents(latents)


def test_zero_initialised_fusion_leaves_the_decoded_video_bit_identical(base):
    policy, latents, video = base
    torch.manual_seed(1)
    branch = attach_motion_branch(policy, MotionBranch.for_policy(policy, hidden_channels=16))
    try:
        with torch.no_grad():
            decoded = decode_with_flow(policy, latents)
            plain = policy.decode_latents(latents)  # every decode goes through the fused decoder
        assert torch.equal(decoded.video, video) and torch.equal(plain, video)
        assert decoded.flow.shape == (2, 8, 2, 32, 32) and decoded.flow.abs().mean() > 0  # the head is not zero
        assert policy.motion_branch is branch and "motion_branch.fuse.weight" in dict(policy.named_parameters())
    finally:
        assert detach_motion_branch(policy) is branch
    assert not hasattr(policy, "motion_branch")
    with torch.no_grad():
        assert torch.equal(policy.decode_latents(latents), video)


def test_decoding_stays_causal_chunk_by_chunk(base):
    """The first k latent frames decode to the same frames and flows alone as inside the whole clip,
    and a sliced batch (one clip per decoder pass) matches the batched decode."""
    policy, latents, _ = base
    torch.manual_seed(2)
    branch = attach_motion_branch(policy, MotionBranch.for_policy(policy, hidden_channels=8))
    try:
        torch.nn.init.normal_(branch.fuse.weight, std=0.1)  # a trained fusion, so frames depend on the branch
        with torch.no_grad():
            whole = decode_with_flow(policy, latents)
            prefix = decode_with_flow(policy, latents[:, :, :3])  # 3 latent frames = 5 video frames
            policy.vae.use_slicing = True
            sliced = decode_with_flow(policy, latents)
    finally:
        policy.vae.use_slicing = False
        detach_motion_branch(policy)
    assert torch.allclose(prefix.video, whole.video[:, :5], atol=1e-5)
    assert torch.allclose(prefix.flow, whole.flow[:, :4], atol=1e-5)
    assert torch.allclose(sliced.video, whole.video, atol=1e-5) and torch.allclose(sliced.flow, whole.flow, atol=1e-5)


def test_training_moves_only_the_decoder_and_the_branch_and_learns_the_flow():
    policy = build_policy("tiny", None, seed=0)
    clip = render(SceneSpec("fluid", FLUID_SHAPE, "white", "black", "right"), num_frames=5, seed=0)
    with torch.no_grad():
        latents = policy.encode_video(clip.video[None])
        base_video = policy.decode_latents(latents)
    frozen_before = {prefix: _snapshot(policy.get_submodule(prefix)) for prefix in FROZEN}
    decoder_before = _snapshot(policy.vae.decoder)
    torch.manual_seed(3)
    branch = attach_motion_branch(policy, MotionBranch.for_policy(policy, hidden_channels=16, flow_scale_px=2.0))
    branch_before = _snapshot(branch)
    params = motion_branch_parameters(policy)
    names = [name for name, p in policy.named_parameters() if p.requires_grad]
    assert names and all(n.startswith(("vae.decoder.", "vae.post_quant_conv.", "motion_branch.")) for n in names)
    assert sum(p.numel() for p in params) == sum(p.numel() for p in policy.parameters() if p.requires_grad)
    optimizer = torch.optim.Adam(params, lr=2e-3)
    losses = []
    for _ in range(5):
        decoded = decode_with_flow(policy, latents)
        motion = motion_errors(decoded.flow, clip.flow[None], branch.flow_scale_px)
        loss = (motion + per_sample_mse(decoded.video, clip.video[None])).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(motion.item())
    assert losses[-1] < 0.8 * losses[0], losses
    for prefix, before in frozen_before.items():
        after = policy.get_submodule(prefix).state_dict()
        assert all(torch.equal(after[k], v) for k, v in before.items()), prefix
    assert any(not torch.equal(policy.vae.decoder.state_dict()[k], v) for k, v in decoder_before.items())
    assert all(not torch.equal(branch.state_dict()[k], v) for k, v in branch_before.items())
    with torch.no_grad():
        assert not torch.equal(policy.decode_latents(latents), base_video)  # the fusion now contributes


def test_trained_state_round_trips_through_trainable_state_and_the_branch_state_dict(base):
    source = build_policy("tiny", None, seed=0)
    torch.manual_seed(4)
    attach_motion_branch(source, MotionBranch.for_policy(source, hidden_channels=8))
    for param in motion_branch_parameters(source):
        param.data.add_(0.01 * torch.randn_like(param))  # stands in for training
    target = build_policy("tiny", None, seed=0)
    torch.manual_seed(5)
    attach_motion_branch(target, MotionBranch.for_policy(target, hidden_channels=8))
    latents = base[1][:1, :, :2]
    with torch.no_grad():
        expected = decode_with_flow(source, latents)
        assert not torch.equal(decode_with_flow(target, latents).flow, expected.flow)
        missing, unexpected = target.load_state_dict(trainable_state(source), strict=False)
        assert not unexpected
        decoded = decode_with_flow(target, latents)
    assert torch.equal(decoded.video, expected.video) and torch.equal(decoded.flow, expected.flow)
    alone = MotionBranch.for_policy(target, hidden_channels=8)
    alone.load_state_dict(source.motion_branch.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(alone.state_dict().values(), source.motion_branch.state_dict().values()))


def test_misuse_is_refused_with_what_to_do(base):
    policy = base[0]
    with pytest.raises(ValueError, match="attach_motion_branch"):
        decode_with_flow(policy, base[1])
    with pytest.raises(ValueError, match="decoder channels"):
        attach_motion_branch(policy, MotionBranch(feature_channels=5))
    with pytest.raises(ValueError, match="flow_scale_px"):
        MotionBranch(8, flow_scale_px=0.0)
    attach_motion_branch(policy, MotionBranch.for_policy(policy, hidden_channels=4))
    try:
        with pytest.raises(ValueError, match="already has a motion branch"):
            attach_motion_branch(policy, MotionBranch.for_policy(policy))
        policy.vae.use_tiling = True
        with pytest.raises(ValueError, match="disable_tiling"):
            decode_with_flow(policy, base[1])
    finally:
        policy.vae.use_tiling = False
        detach_motion_branch(policy)
