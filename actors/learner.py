"""Learner: the one trainer actor of every stage, data-parallel across the pool's bundles.

A learner owns the trainable parameters, the optimizer and (when its objective needs one) the
frozen reference, all on the device its bundle was given (`actors.device`). The stage's loss
comes from an objective (`actors.objectives`): the learner runs the optimizer steps the
objective yields and owns what is common to all of them — precision, gradient sync, clipping,
refusing non-finite steps, offload between phases, weights out and checkpoint state.

Data parallelism: N learners, one per bundle, form one `torch.distributed` process group (gloo
on CPU, NCCL on GPU) set up by the driver (`dist_address` on rank 0, then `init_data_parallel`
on every rank); the transformer is wrapped in DDP, which broadcasts rank 0's weights at wrap
time and averages gradients in backward. Every rank holds the same weights and optimizer state,
so rank 0 alone ships weights and checkpoints.

The reference for a KL term is the same transformer with its LoRA adapters disabled when the
policy trains LoRA (no second copy in memory), else a frozen copy made at start.

Weight averaging: with `OptimizerSpec.ema_decay` the learner keeps an exponential moving
average of its trainable parameters (diffusers' `EMAModel`, on the same device, offloaded with
them), stepped once per stage step. What leaves the learner as *the stage's result* is the
average — a checkpoint's `policy` weights (what the next stage's `init_from` loads), the
objective's own evaluation, and `get_weights(averaged=True)` for a driver's evaluation — while
the rollouts sample with the online weights, so GRPO's ratio and KL stay on-policy. The online
weights and the average's state travel in the checkpoint's learner state, so a resume is exact.

Limits: DDP replicates the trainable parameters, their gradients and optimizer state on every
rank — enough for LoRA and for full fine-tuning of models that fit one accelerator (Wan2.1-1.3B);
a 14B full fine-tune needs sharding (FSDP), which is not built. DDP's gradient buckets stay on
the accelerator while the learner is released.
"""

from __future__ import annotations

import copy
import math
import socket
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

from actors.device import assigned_device, tensor_devices
from actors.faults import CrashOnRequest
from actors.offload import Offloader, PhaseMember
from diffusers.training_utils import EMAModel
from policy.wan import adapters_disabled, load_policy, trainable_state


@dataclass(frozen=True)
class OptimizerSpec:
    learning_rate: float
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    ema_decay: float | None = None  # a weight average of the trainable parameters (see the module docstring)

    @classmethod
    def of(cls, stage) -> "OptimizerSpec":
        """From a stage's config section (its learning_rate, max_grad_norm, ema_decay)."""
        return cls(stage.learning_rate, max_grad_norm=stage.max_grad_norm, ema_decay=stage.ema_decay)


class Learner(PhaseMember, CrashOnRequest):
    """policy: the `policy` config section; objective: a stage objective from `actors.objectives`."""

    def __init__(self, policy, optimizer: OptimizerSpec, objective, seed: int = 0, rank: int = 0, world_size: int = 1):
        torch.set_num_threads(policy.torch_threads)
        self.device = assigned_device()
        self.policy, params = load_policy(policy, seed=seed, device=self.device)
        self.lora = policy.trainable == "lora"
        self.objective = objective
        prepare = getattr(objective, "prepare", None)  # e.g. SFT attaches trainable decoder-level modules
        self.params = prepare(self.policy, params) if prepare else params
        self.reference = None
        if objective.needs_reference and not self.lora:
            self.reference = copy.deepcopy(self.policy.transformer).requires_grad_(False).eval()
        self.optimizer_spec = optimizer
        self.optimizer = torch.optim.AdamW(self.params, lr=optimizer.learning_rate, weight_decay=optimizer.weight_decay)
        # a constant decay (min_decay = decay: no warm-up ramp, whose first ~20 steps barely average), the first
        # update copied; kept in fp32 whatever the weights' dtype: a (1 − decay)-sized step toward bf16 weights rounds away
        self.ema = (EMAModel(self.params, decay=optimizer.ema_decay, min_decay=optimizer.ema_decay, foreach=True)
                    if optimizer.ema_decay else None)
        if self.ema is not None:
            self.ema.to(self.device, dtype=torch.float32)
        self.offloader = Offloader(self.device).manage(self.policy.transformer, self.policy.vae,
                                                       getattr(self.policy, "motion_branch", None), self.reference, self.optimizer,
                                                       self.ema)
        trained_module = getattr(objective, "trained_module", None)
        # what DDP wraps and objectives call: the transformer, or the stage's own forward module
        self.model: torch.nn.Module = trained_module(self.policy) if trained_module else self.policy.transformer
        self.rank, self.world_size = rank, world_size
        self.version = 0

    # -- data parallelism -------------------------------------------------------------------
    def dist_address(self) -> str:
        """rank 0: a TCP rendezvous address on this node for the process group."""
        import ray

        with socket.socket() as probe:
            probe.bind(("", 0))
            port = probe.getsockname()[1]
        return f"tcp://{ray.util.get_node_ip_address()}:{port}"

    def init_data_parallel(self, address: str) -> int:
        """Join the process group and wrap the transformer in DDP (every rank calls this at once)."""
        if self.world_size == 1:
            return self.rank
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=address, rank=self.rank, world_size=self.world_size)
        device_ids = [self.device.index or 0] if self.device.type == "cuda" else None
        self.model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        return self.rank

    @property
    def data_parallel(self) -> bool:
        return isinstance(self.model, torch.nn.parallel.DistributedDataParallel)

    def no_sync(self):
        """Accumulate gradients without all-reducing them (every backward but a step's last)."""
        return self.model.no_sync() if self.data_parallel else nullcontext()

    # -- what objectives call ---------------------------------------------------------------
    def velocity(self, latents: torch.Tensor, sigmas: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.policy.velocity(latents, sigmas, text, model=self.model)

    @torch.no_grad()
    def reference_velocity(self, latents: torch.Tensor, sigmas: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        if self.lora:
            with adapters_disabled(self.policy.transformer):
                return self.policy.velocity(latents, sigmas, text)
        return self.policy.velocity(latents, sigmas, text, model=self.reference)

    # -- the update -------------------------------------------------------------------------
    def update(self, seed: int, shard_sizes: list[int], *batch, **options) -> dict[str, float]:
        """Run the optimizer steps the objective yields for this rank's shard of the batch.

        A step whose loss or gradient norm is not finite on ANY rank is skipped on every rank
        (counted), so it never reaches the weights and the ranks stay identical.
        """
        self.policy.transformer.train()
        totals: dict[str, float] = {}
        updates = skipped = 0
        for run_step in self.objective.optimizer_steps(self, seed, shard_sizes, *batch, **options):
            self.optimizer.zero_grad(set_to_none=True)
            stats = run_step()
            for key in stats:
                totals.setdefault(key, 0.0)  # reported (as 0) even when every step is skipped
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.optimizer_spec.max_grad_norm).item()
            if not self._finite_everywhere(math.isfinite(grad_norm) and math.isfinite(stats["loss"])):
                skipped += 1
                self.optimizer.zero_grad(set_to_none=True)
                continue
            self.optimizer.step()
            updates += 1
            for key, value in {**stats, "grad_norm": grad_norm}.items():
                totals[key] = totals.get(key, 0.0) + value
        totals.setdefault("grad_norm", 0.0)
        if self.ema is not None and updates:
            self.ema.step(self.params)
        self.policy.transformer.eval()
        self.version += 1
        metrics = {key: value / max(updates, 1) for key, value in totals.items()}
        metrics.update(optimizer_steps=updates, skipped_updates=skipped, version=self.version)
        return metrics

    def _finite_everywhere(self, finite: bool) -> bool:
        if self.world_size == 1:
            return finite
        flag = torch.tensor([1.0 if finite else 0.0], device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def evaluate(self, **options) -> dict[str, float]:
        """The objective's own evaluation (e.g. DPO's held-out implicit accuracy), without
        gradients, of the stage's result (the weight average when there is one)."""
        self.policy.transformer.eval()
        with self.averaged_weights():
            return self.objective.evaluate(self, **options)

    @contextmanager
    def averaged_weights(self):
        """The weight average in place of the online parameters for the duration (nothing
        without one); the online values are restored after, bit for bit."""
        if self.ema is None:
            yield
            return
        self.ema.store(self.params)
        self.ema.copy_to(self.params)
        try:
            yield
        finally:
            self.ema.restore(self.params)

    def refresh_reference(self) -> int:
        """Online DPO: the reference becomes the current policy (a frozen copy, never the adapters'
        base, which cannot move)."""
        if self.reference is None:
            raise ValueError("refresh_reference needs a frozen-copy reference (not LoRA's adapters-off base)")
        self.reference.load_state_dict(self.policy.transformer.state_dict())
        return self.version

    # -- weights, state, phases -------------------------------------------------------------
    def get_weights(self, averaged: bool = False) -> tuple[dict[str, torch.Tensor], int]:
        """(host copies of the trainable weights, version); call with `num_returns=2` so the
        weights stay in the object store. `averaged`: the weight average, under the version's
        negative, so a rollout actor can never take it for the online weights of that version."""
        if averaged and self.ema is not None:
            with self.averaged_weights():
                return trainable_state(self.policy), -self.version
        return trainable_state(self.policy), self.version

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(the stage's result: the trainable weights, averaged when averaging; optimizer state,
        version and — when averaging — the online weights and the average's state) on the host."""
        extra = {"optimizer": _to_host(self.optimizer.state_dict()), "version": self.version}
        if self.ema is None:
            return trainable_state(self.policy), extra
        extra.update(online=trainable_state(self.policy), ema=_to_host(self.ema.state_dict()))
        with self.averaged_weights():
            return trainable_state(self.policy), extra

    def load_state(self, weights: dict[str, torch.Tensor], extra: dict) -> int:
        self.policy.load_state_dict(extra.get("online", weights), strict=False)
        self.optimizer.load_state_dict(extra["optimizer"])  # moves state to each parameter's device
        if self.ema is not None:
            if "ema" not in extra:
                raise ValueError("this learner averages its weights (ema_decay) but the checkpoint holds no average")
            self.ema.load_state_dict(extra["ema"])
            self.ema.to(self.device, dtype=torch.float32)
        self.version = extra["version"]
        return self.version

    def placement(self) -> dict[str, str]:
        """Where this learner's tensors are (tests check it against the bundle's device)."""
        optimizer_state = [v for state in self.optimizer.state.values() for v in state.values() if torch.is_tensor(v) and v.ndim]
        return {"device": str(self.device), **tensor_devices(
            transformer=self.policy.transformer.parameters(), vae=self.policy.vae.parameters(),
            reference=self.reference.parameters() if self.reference is not None else [], optimizer_state=optimizer_state)}

    def ping(self) -> int:
        return self.version


def _to_host(value):
    if torch.is_tensor(value):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: _to_host(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_host(item) for item in value]
    return value

