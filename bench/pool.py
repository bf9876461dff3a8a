"""Colocated vs disaggregated placement on the same resources: samples/s and utilisation.

    python -m bench.pool --config configs/toy.yaml [--bundles 2] [--steps 5]

Both placements run the real GRPO driver, one after the other in one Ray session, on the same
N bundles (report §6.1.1): colocated puts a rollout and a reward actor on every bundle and moves
all of them through sample → evaluate → update; disaggregated keeps `reward_bundles` of them
for reward only. The first step of each run is a warm-up and is dropped.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import ray
import torch

from cluster.config import load_config, parse_overrides


def measure(config_path: str, placement: str, bundles: int, steps: int, extra: list[str]) -> dict[str, float]:
    from cluster import grpo

    with tempfile.TemporaryDirectory() as run_dir:
        overrides = parse_overrides(extra + [
            f"run_dir={run_dir}", f"grpo.steps={steps + 1}", "grpo.checkpoint_every=1000", "grpo.eval_every=0",
            f"pool.num_bundles={bundles}", f"pool.placement={placement}",
        ])
        config = load_config(config_path, overrides)
        if config.policy.model_path and not Path(config.policy.model_path).exists():
            config = config.model_copy(update={"policy": config.policy.model_copy(update={"model_path": None})})
        records = grpo.run(config)[1:]
    samples = config.grpo.prompts_per_step * config.grpo.group_size
    step_seconds = statistics.median(r["step_seconds"] for r in records)
    return {
        "samples_per_second": samples / step_seconds,
        "utilisation": statistics.median(r["utilisation"] for r in records),
        "step_seconds": step_seconds,
        **{phase: statistics.median(r[f"seconds/{phase}"] for r in records) for phase in ("sample", "evaluate", "update")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/toy.yaml")
    parser.add_argument("--bundles", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    torch.set_num_threads(1)
    ray.init(address="local", num_cpus=args.bundles, resources={"accelerator": args.bundles}, include_dashboard=False,
             log_to_driver=False)
    results = {p: measure(args.config, p, args.bundles, args.steps, args.set) for p in ("colocated", "disaggregated")}
    print(f"\n{args.bundles} bundles, {args.steps} steps each after warm-up ({args.config}):")
    print(f"  {'placement':<14} {'samples/s':>9} {'util':>6} {'step s':>7} {'sample':>7} {'eval':>6} {'update':>7}")
    for placement, r in results.items():
        print(f"  {placement:<14} {r['samples_per_second']:9.2f} {r['utilisation']:6.2f} {r['step_seconds']:7.2f} "
              f"{r['sample']:7.2f} {r['evaluate']:6.2f} {r['update']:7.2f}")
    colocated, disaggregated = results["colocated"], results["disaggregated"]
    print(f"\ncolocated / disaggregated: samples/s x{colocated['samples_per_second'] / disaggregated['samples_per_second']:.2f}, "
          f"utilisation x{colocated['utilisation'] / disaggregated['utilisation']:.2f}")


if __name__ == "__main__":
    main()
