"""Seconds per GRPO phase on the toy config, and the SDE sampler's cost over plain ODE sampling.

    python -m bench.grpo_step --config configs/toy.yaml [--steps 6]

Both measurements run in one process, side by side: the GRPO phases come from a real Ray
run of the driver (first step dropped as warm-up); the sampler ratio times the same policy,
prompts and schedule with noise_level > 0 (SDE + log-prob) and noise_level = 0 (Euler ODE).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from cluster.config import load_config, parse_overrides
from policy.sampling import sample_trajectories
from policy.wan import build_policy, sampling_sigmas


def time_sampler(policy, config, noise_level: float, repeats: int) -> float:
    prompts = ["a red square moves left on a gray background"] * config.grpo.group_size * config.grpo.prompts_per_step
    sigmas = sampling_sigmas(config.sampling.num_steps, config.sampling.shift)
    shape = config.clip.shape
    sample_trajectories(policy, prompts, sigmas, noise_level, shape, torch.Generator().manual_seed(0), decode=False)
    times = []
    for i in range(repeats):
        started = time.perf_counter()
        sample_trajectories(policy, prompts, sigmas, noise_level, shape, torch.Generator().manual_seed(i), decode=False)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/toy.yaml")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as run_dir:
        overrides = parse_overrides(args.set + [f"run_dir={run_dir}", f"grpo.steps={args.steps}", "grpo.checkpoint_every=1000", "grpo.eval_every=0"])
        config = load_config(args.config, overrides)
        if config.policy.model_path and not Path(config.policy.model_path).exists():
            print(f"note: {config.policy.model_path} missing (run `make pretrain`); timing a randomly initialised tiny policy")
            config = config.model_copy(update={"policy": config.policy.model_copy(update={"model_path": None})})
        from cluster import grpo

        records = grpo.run(config)[1:]  # drop the warm-up step
    print(f"\nGRPO step phases on {args.config} ({len(records)} steps after warm-up, "
          f"{config.grpo.prompts_per_step}x{config.grpo.group_size} videos/step, {config.sampling.num_steps} denoising steps):")
    total = 0.0
    for phase in ("sample", "evaluate", "update"):
        seconds = statistics.median(r[f"seconds/{phase}"] for r in records)
        total += seconds
        print(f"  {phase:<9} {seconds:7.3f} s  (median)")
    print(f"  {'step':<9} {total:7.3f} s")
    policy = build_policy(config.policy.preset, config.policy.model_path)
    sde = time_sampler(policy, config, config.sampling.noise_level, repeats=5)
    ode = time_sampler(policy, config, 0.0, repeats=5)
    print(f"\nsampler (no VAE decode), same prompts and schedule: SDE+log-prob {sde:.4f} s, ODE {ode:.4f} s, "
          f"ratio SDE/ODE = {sde / ode:.3f}")


if __name__ == "__main__":
    main()
