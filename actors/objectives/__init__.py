"""Stage objectives for the generic `Learner`: what one update computes, as optimizer steps.

An objective turns a stage's batch into a sequence of optimizer steps; each step is a closure
that runs the forward and backward passes of one minibatch and returns its statistics. The
learner owns everything around it (device, precision, data-parallel sync, clipping, skipping
non-finite steps, the optimizer), so a new stage adds an objective module here (`grpo`, `sft`, `dpo`) and its math in
`algorithms/`, not a learner. Optional hooks: `prepare(policy, params) -> params` (attach
modules, choose what trains), `trained_module(policy) -> nn.Module` (what DDP wraps; the
transformer by default) and `needs_reference`.

Data parallelism: every rank runs the same number of optimizer steps with the same number of
backward calls (timesteps and epochs come from a generator seeded identically on every rank);
each backward but the last of a step runs under `ctx.no_sync()`, so DDP all-reduces once per
optimizer step; and each rank scales its loss by (local samples × world size / global samples),
so the averaged gradient is exactly the gradient of the whole batch's mean loss.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import nn

from policy.wan import VideoPolicy

StepFn = Callable[[], dict[str, float]]


class TrainContext(Protocol):
    """What the learner lends an objective (see `actors.learner.Learner`)."""

    device: torch.device
    rank: int
    world_size: int
    policy: VideoPolicy
    model: nn.Module  # the objective's trained module, DDP-wrapped when data-parallel
    data_parallel: bool

    def velocity(self, latents: torch.Tensor, sigmas: torch.Tensor, text: torch.Tensor) -> torch.Tensor: ...

    def reference_velocity(self, latents: torch.Tensor, sigmas: torch.Tensor, text: torch.Tensor) -> torch.Tensor: ...

    def no_sync(self): ...


def minibatch_splits(shard_sizes: list[int], rank: int, num_minibatches: int, generator: torch.Generator) -> list[tuple[torch.Tensor, float]]:
    """This rank's minibatches as (local sample indices, loss scale), the k-th of every rank
    forming the k-th global minibatch.

    Local samples are shuffled with `generator` (seeded per rank) and split into
    `num_minibatches` near-equal chunks; the scale n_local · world / n_global makes the DDP
    average of per-rank means the mean over the global minibatch.
    """
    world = len(shard_sizes)
    if min(shard_sizes) < num_minibatches:
        raise ValueError(f"every learner needs >= {num_minibatches} samples (one per minibatch); shard sizes {shard_sizes}")
    chunk_sizes = [[len(c) for c in torch.arange(n).tensor_split(num_minibatches)] for n in shard_sizes]
    order = torch.randperm(shard_sizes[rank], generator=generator)
    splits = []
    for k, index in enumerate(order.tensor_split(num_minibatches)):
        global_size = sum(sizes[k] for sizes in chunk_sizes)
        splits.append((index, len(index) * world / global_size))
    return splits
