"""Data-parallel equivalence: one learner on the whole batch vs two DDP learners (gloo) on halves.

    python -m bench.dp_equivalence [--updates 8] [--out docs/dp_equivalence.png]

Both runs start from the same weights and see the same GRPO batches (2 prompt groups of 4 from a
tiny Wan policy), one optimizer step per update. Per update it prints the largest weight
difference between the runs next to the largest weight change the update made, and the
difference between the two DDP ranks (which must stay exactly 0: DDP broadcasts once and
averages every gradient). Gradients agree to float rounding; Adam divides each gradient by its
own running scale, so the weight gap is measured against the update size.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import ray
import torch

from actors.learner import Learner, OptimizerSpec
from actors.objectives.grpo import GRPOObjective
from actors.rollout import RolloutActor
from cluster.runtime import LearnerGroup
from policy.config import ClipConfig, PolicyConfig, SamplingConfig

PROMPTS = ["a red square moves left on a gray background", "two blue circles move up on a black background"]


def max_difference(a: dict, b: dict) -> float:
    return max((a[name] - b[name]).abs().max().item() for name in a)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--out", default=None, help="PNG of the gaps per update")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    policy = PolicyConfig()
    objective = GRPOObjective(group_size=4, clip_range=0.2, kl_beta=0.05, timestep_fraction=1.0, num_minibatches=1)
    optimizer = OptimizerSpec(args.lr)
    rollout = RolloutActor(policy, SamplingConfig(num_steps=4), ClipConfig(num_frames=5, height=24, width=24))
    own_ray = not ray.is_initialized()
    if own_ray:
        ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=tempfile.mkdtemp(prefix="dp-eq-"))
    single = Learner(policy, optimizer, objective)
    handles = {("main", r): ray.remote(Learner).options(num_cpus=0.1).remote(policy, optimizer, objective, 0, r, 2) for r in range(2)}
    group = LearnerGroup(handles)
    rows = []
    try:
        for update in range(1, args.updates + 1):
            rollout.set_weights(*single.get_weights())
            _, trajectories, _ = rollout.sample(PROMPTS, 4, update, rollout.weights_version)
            advantages = torch.randn(1, 8, generator=torch.Generator().manual_seed(update))
            ones = torch.ones(1)
            before, _ = single.get_weights()
            single.update(update, [8], trajectories, advantages, ones, advantages[0])
            ray.get([refs[0] for refs in group.update(update, [4, 4], [
                (trajectories.shard(0, 4), advantages[:, :4], ones, advantages[0, :4]),
                (trajectories.shard(4, 8), advantages[:, 4:], ones, advantages[0, 4:])]).values()])
            expected, _ = single.get_weights()
            (rank0, _), (rank1, _) = ray.get([h.get_weights.remote() for h in handles.values()])
            rows.append({"update": update, "gap": max_difference(rank0, expected), "step": max_difference(expected, before),
                         "ranks": max_difference(rank0, rank1)})
            print(f"update {update}: max |w_DDP - w_single| {rows[-1]['gap']:.2e}  max |update| {rows[-1]['step']:.2e}  "
                  f"ratio {rows[-1]['gap'] / rows[-1]['step']:.1e}  ranks differ by {rows[-1]['ranks']:.1e}")
    finally:
        for handle in handles.values():
            ray.kill(handle)
        if own_ray:
            ray.shutdown()
    if args.out:
        plot(rows, args.out)
    return rows


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    updates = [r["update"] for r in rows]
    ax.semilogy(updates, [r["step"] for r in rows], marker="o", label="largest weight change of the update")
    ax.semilogy(updates, [r["gap"] for r in rows], marker="s", label="largest gap: 2 DDP learners vs 1 learner")
    ax.set_xlabel("update")
    ax.set_ylabel("absolute weight difference")
    ax.set_title("Data-parallel GRPO update (gloo, fp32) equals the single-learner update")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
