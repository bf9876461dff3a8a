"""Joint-reward makespan: serial vs planned grouped execution of five lightweight critics (report §6.1.2).

One run: start a local Ray, render a toy batch, profile every reward worker under the quota grid
(measured now unless --use-cache), plan the groups, then time the serial phase (each worker alone at
quota 1, one after another) and the planned phase (groups in sequence, members at once) alternately
for --rounds rounds, and print, side by side:

    serial makespan (measured), planned makespan (measured), the planner's predicted makespan,
    the lower bound max(max_w C_w(1), sum_w min_q q C_w(q)), serial/planned and planned/lower bound.

Serial is timed twice: every worker at exactly quota 1 (the literal baseline), and every worker at
the quota <= 1 that profiled fastest (the fair one: on a busy CPU, all threads can be slower than
one). The planner and the lower bound use the same "fastest within the allotment" profiles C~.

Measured makespans are the driver's wall time from launching the first group to collecting the
last (Ray dispatch and result transfer included), median over rounds.

    python -m bench.reward_makespan                  # CPU: the quota is a share of the threads
    python -m bench.reward_makespan --device cuda    # NVIDIA GPU: quotas through MPS

On a CPU the quota is a thread share, so the gain is bounded by how badly a single critic uses the
node's cores (on 2 cores, at most 2x); on a GPU the flow critics run RAFT on the device under MPS,
while the other critics still do their work on the CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

import ray
import torch

from cluster.reward_group import RewardWorkerGroup
from schedulers.mps import lower_bound
from toyworld.world import ToyWorld

CPU_WORKERS = [
    "toy_judges",
    "motion",
    {"worker": "motion_fast", "critic": "motion", "options": {"time_direction": False}},
    "perceptual",
    "safety",
]


def cuda_workers(raft_pretrained: bool) -> list:
    raft = {"flow_backend": "raft", "device": "cuda", "raft_pretrained": raft_pretrained}
    return [
        "toy_judges",
        {"worker": "motion_raft", "critic": "motion", "options": raft},
        {"worker": "motion_raft_fast", "critic": "motion", "options": {**raft, "time_direction": False}},
        "perceptual",
        "safety",
    ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=None,
                        help="frame height and width in pixels (default 48 on cpu, 128 on cuda: RAFT needs >= 128)")
    parser.add_argument("--rounds", type=int, default=5, help="timed phases of each kind (median)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per quota when profiling (median)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="num_cpus for the local Ray")
    parser.add_argument("--run-dir", default=None, help="profile cache and MPS directories (default: a temp dir)")
    parser.add_argument("--use-cache", action="store_true", help="reuse cached profiles instead of measuring")
    parser.add_argument("--raft-pretrained", action="store_true", help="GPU: load RAFT weights (needs them locally)")
    args = parser.parse_args(argv)

    run_dir = args.run_dir or tempfile.mkdtemp(prefix="reward_makespan_")
    # address="local": always a fresh Ray of our own, never a cluster someone else started here.
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    try:
        size = args.size or (128 if args.device == "cuda" else 48)
        clips = ToyWorld(num_frames=args.frames, height=size, width=size).sample(args.batch, seed=0)
        videos = torch.stack([clip.video for clip in clips])
        prompts = [clip.prompt for clip in clips]
        specs = CPU_WORKERS if args.device == "cpu" else cuda_workers(args.raft_pretrained)
        with RewardWorkerGroup(specs, run_dir=run_dir, device=args.device, repeats=args.repeats) as group:
            report(group, videos, prompts, args)
    finally:
        ray.shutdown()


def report(group: RewardWorkerGroup, videos: torch.Tensor, prompts: list[str], args) -> None:
    profiles = group.profile(videos, prompts, refresh=not args.use_cache)
    plan = group.plan()
    planning = group.planning_profiles()  # each worker at its fastest measured quota within its allotment
    bound = lower_bound(planning)

    print(f"reward makespan bench: {len(profiles)} workers, videos {list(videos.shape)}, device {args.device}")
    print(f"mps_status: {group.mps_status}; total_threads {group.total_threads}; quota grid {group.quota_grid}")
    print(f"profiles C_w(q) in seconds (median of {args.repeats}; "
          f"{'cached' if group.metrics['profile_measurements'] == 0 else 'measured this run'}):")
    grid = sorted({q for profile in profiles.values() for q in profile})
    print("  " + f"{'worker':<18}" + "".join(f"{'q=' + format(q, 'g'):>10}" for q in grid))
    for worker, profile in profiles.items():
        print("  " + f"{worker:<18}" + "".join(f"{profile[q]:>10.3f}" if q in profile else f"{'-':>10}" for q in grid))
    print(f"plan ({plan.method}):")
    for index, (members, seconds) in enumerate(zip(plan.groups, plan.group_seconds)):
        quotas = ", ".join(f"{w}@{q:g}" for w, q in members.items())
        print(f"  group {index}: {quotas}   predicted T_g {seconds:.3f} s")

    # Three phases per round, interleaved so load from other processes hits each alike:
    #   serial@1    every worker alone with exactly quota 1 (all threads / 100 % MPS),
    #   serial      every worker alone, at its fastest measured quota (the fair "before"),
    #   planned     the plan's groups in sequence, members at once.
    phases = {
        "serial@1": dict(mode="serial", fastest_within_quota=False),
        "serial": dict(mode="serial"),
        "planned": dict(mode="planned", plan=plan),
    }
    for options in phases.values():  # untimed: process start-up on GPUs, thread pools, caches
        group.score(videos, prompts, **options)
    seconds = {name: [] for name in phases}
    reference, identical = None, True
    for _ in range(args.rounds):
        for name, options in phases.items():
            result = group.score(videos, prompts, **options)
            seconds[name].append(group.metrics["last_phase_seconds"])
            reference = reference or result.scores
            identical &= all(torch.equal(reference[k], result.scores[k]) for k in reference)
    measured = {name: statistics.median(values) for name, values in seconds.items()}

    labels = {
        "serial@1": "serial makespan, each worker at quota 1",
        "serial": "serial makespan, each at its fastest quota",
        "planned": "planned makespan",
    }
    for name, label in labels.items():
        rounds = ", ".join(f"{s:.3f}" for s in seconds[name])
        label = f"{label} (measured, median of {args.rounds})"
        print(f"{label:<66} {measured[name]:8.3f} s   (rounds: {rounds})")
    rows = [
        ("planner-predicted makespan (eq. 8)", plan.makespan),
        ("planner's serial makespan sum_w C~_w(1)", plan.serial_makespan),
        ("lower bound max(max_w C~_w(1), sum_w min_q q C~_w(q))", bound),
    ]
    for label, value in rows:
        print(f"{label:<66} {value:8.3f} s")
    ratios = [
        ("serial@1 / planned (measured)", measured["serial@1"] / measured["planned"]),
        ("serial (fastest quota) / planned (measured)", measured["serial"] / measured["planned"]),
        ("planned (measured) / lower bound", measured["planned"] / bound),
        ("planned (measured) / predicted", measured["planned"] / plan.makespan),
    ]
    for label, value in ratios:
        print(f"{label:<66} {value:8.3f}")
    print(f"C~_w(q) = min over measured q' <= q of C_w(q'); scores identical in all modes: {identical}; "
          f"worker restarts: {group.metrics['worker_restarts']}")


if __name__ == "__main__":
    main()
