"""The generic learner: exact first-step ratio in every precision, and data parallelism that
changes nothing but the speed."""

import copy

import pytest
import ray
import torch

from actors.learner import Learner, OptimizerSpec
from actors.objectives.grpo import GRPOObjective
from actors.rollout import RolloutActor
from cluster.runtime import LearnerGroup
from policy.config import ClipConfig, PolicyConfig, SamplingConfig

PROMPTS = ["a red square moves left on a gray background", "two blue circles move up on a black background"]
CLIP = ClipConfig(num_frames=5, height=24, width=24)


def rollouts(policy: PolicyConfig, prompts=PROMPTS[:1], group_size=4):
    rollout = RolloutActor(policy, SamplingConfig(num_steps=4), CLIP)
    _, trajectories, _ = rollout.sample(prompts, group_size, 0, 0)
    return trajectories


@pytest.mark.parametrize("dtype,trainable", [("float32", "full"), ("bfloat16", "lora"), ("bfloat16", "full")])
def test_rollout_then_learner_gives_ratio_one_and_kl_zero_on_the_first_inner_step(dtype, trainable):
    """The learner recomputes the rollout's log-probs bit for bit (same weights, precision and
    float32 SDE math), and the reference equals the policy before any update (issue 10, 11)."""
    policy = PolicyConfig(dtype=dtype, trainable=trainable, gradient_checkpointing=True)
    trajectories = rollouts(policy)
    objective = GRPOObjective(group_size=4, clip_range=1e-3, kl_beta=0.1, timestep_fraction=1.0, num_minibatches=1)
    learner = Learner(policy, OptimizerSpec(1e-3), objective)
    advantages = torch.tensor([[1.0, -1.0, 0.5, -0.5]])
    metrics = learner.update(0, [4], trajectories, advantages, torch.ones(1), advantages[0])
    assert metrics["ratio"] == 1.0 and metrics["clip_fraction"] == 0.0 and metrics["kl"] == 0.0
    assert metrics["optimizer_steps"] == 1 and metrics["grad_norm"] > 0
    frozen = {p.dtype for n, p in learner.policy.transformer.named_parameters() if not p.requires_grad}
    assert {p.dtype for p in learner.params} == {torch.float32}  # trainable + optimizer state in fp32
    if dtype == "bfloat16":
        assert torch.bfloat16 in (frozen or {learner.policy.compute_dtype})


def test_gradient_checkpointing_changes_memory_not_gradients():
    grads = []
    for checkpointing in (False, True):
        policy = PolicyConfig(gradient_checkpointing=checkpointing)
        trajectories = rollouts(policy)
        learner = Learner(policy, OptimizerSpec(1e-3), GRPOObjective(group_size=4, clip_range=0.2, num_minibatches=1))
        (step,) = learner.objective.optimizer_steps(learner, 0, [4], trajectories, torch.tensor([[1.0, -1, 2, -2]]),
                                                    torch.ones(1), torch.tensor([1.0, -1, 2, -2]))
        step()
        grads.append(torch.cat([p.grad.flatten() for p in learner.params]))
    assert torch.allclose(grads[0], grads[1], atol=1e-7, rtol=1e-6)


def test_two_learners_on_two_shards_update_like_one_learner_on_the_whole_batch(ray_cluster):
    """DDP over gloo, each rank on half the groups, equals one learner on the whole batch (fp32):
    no hand-written all-reduce, and the loss scaling makes the averaged gradient exact.

    Gradients agree to float rounding (~1e-9 of a 3e-3 gradient); Adam divides each gradient by
    its own running scale, which magnifies that rounding in near-zero gradients, so the weights
    are compared against the size of the update itself: DP must stay within 0.1 % of it."""
    policy = PolicyConfig()
    trajectories = rollouts(policy, PROMPTS, group_size=4)
    objective = GRPOObjective(group_size=4, clip_range=0.2, kl_beta=0.05, timestep_fraction=1.0, num_minibatches=1)
    optimizer = OptimizerSpec(1e-4)
    advantages = torch.tensor([[1.0, -1.0, 0.5, -0.5, 2.0, 0.0, -1.0, -1.0]])
    ones = torch.ones(1)

    single = Learner(policy, optimizer, objective)
    handles = {("main", rank): ray.remote(Learner).options(num_cpus=0.1).remote(policy, optimizer, objective, 0, rank, 2)
               for rank in range(2)}
    group = LearnerGroup(handles)
    shards = [(trajectories.shard(0, 4), advantages[:, :4], ones, advantages[0, :4]),
              (trajectories.shard(4, 8), advantages[:, 4:], ones, advantages[0, 4:])]
    for step in range(2):
        single_metrics = single.update(step, [8], trajectories, advantages, ones, advantages[0])
        results = ray.get([refs[0] for refs in group.update(step, [4, 4], shards).values()])
    merged = LearnerGroup.merge(results, [4, 4])
    assert merged["loss"] == pytest.approx(single_metrics["loss"], rel=1e-5, abs=1e-7)
    expected, _ = single.get_weights()
    (rank0, _), (rank1, _) = ray.get([h.get_weights.remote() for h in handles.values()])
    assert all(torch.equal(rank0[name], rank1[name]) for name in rank0)  # the ranks never drift apart
    worst = max((rank0[name] - expected[name]).abs().max().item() for name in expected)
    moved = max((expected[name] - initial).abs().max().item()
                for name, initial in Learner(policy, optimizer, objective).get_weights()[0].items())
    assert worst < 1e-3 * moved and worst < 1e-6, (worst, moved)
    for handle in handles.values():
        ray.kill(handle)


def test_weight_average_is_the_result_and_the_online_weights_stay_exact():
    """`ema_decay`: a constant-decay average of the weights after each update (the first update
    copied), in fp32 on the learner's device and offloaded with it; handed out as the stage's
    result (checkpoint weights, averaged get_weights under the negative version) while the online
    weights come back bit for bit, and a learner restored from its state continues identically."""
    policy = PolicyConfig()
    trajectories = rollouts(policy)
    objective = GRPOObjective(group_size=4, clip_range=0.2, timestep_fraction=1.0, num_minibatches=1)
    advantages = torch.tensor([[1.0, -1.0, 0.5, -0.5]])
    batch = (trajectories, advantages, torch.ones(1), advantages[0])
    learner = Learner(policy, OptimizerSpec(1e-2, ema_decay=0.75), objective)
    assert {t.dtype for t in learner.ema.shadow_params} == {torch.float32}
    shadow_ids = {id(t) for t in learner.ema.shadow_params}
    assert shadow_ids <= {id(t) for t in learner.offloader.tensors()}  # released with the rest
    online = []
    for step in range(3):
        learner.update(step, [4], *batch)
        online.append(learner.get_weights()[0])
    averaged, version = learner.get_weights(averaged=True)
    assert version == -3
    for name, value in averaged.items():
        expected = 0.75 * (0.75 * online[0][name] + 0.25 * online[1][name]) + 0.25 * online[2][name]
        assert torch.allclose(value, expected, atol=1e-7), name
    assert not all(torch.equal(averaged[name], online[2][name]) for name in averaged)
    now, version = learner.get_weights()
    assert version == 3 and all(torch.equal(now[name], online[2][name]) for name in now)  # restored exactly

    weights, extra = learner.state()
    assert all(torch.equal(weights[name], averaged[name]) for name in weights)  # the checkpoint's policy = the average
    restored = Learner(policy, OptimizerSpec(1e-2, ema_decay=0.75), objective)
    restored.load_state(weights, copy.deepcopy(extra))  # as through a checkpoint file: on CPU, state() aliases the optimizer's tensors
    for twin in (learner, restored):
        twin.update(3, [4], *batch)
    for averaged_too in (False, True):
        a, b = learner.get_weights(averaged_too)[0], restored.get_weights(averaged_too)[0]
        assert all(torch.equal(a[name], b[name]) for name in a)
    with pytest.raises(ValueError, match="no average"):
        Learner(policy, OptimizerSpec(1e-2, ema_decay=0.75), objective).load_state(*Learner(policy, OptimizerSpec(1e-2), objective).state())
