"""RolloutActor: holds a no-grad copy of the policy on its bundle's device and samples groups of
videos with per-step log-probs."""

from __future__ import annotations

import torch

from actors.device import assigned_device, tensor_devices
from actors.faults import CrashOnRequest
from actors.offload import Offloader, PhaseMember
from policy.sampling import Trajectories, sample_trajectories
from policy.wan import load_policy, sampling_sigmas


class StaleWeightsError(RuntimeError):
    pass


class RolloutActor(PhaseMember, CrashOnRequest):
    """Samples G videos per prompt. Refuses to sample with weights older than the driver expects.

    policy, sampling, clip: its config sections. It builds the policy exactly as the learner does
    (same trainable structure, precision and seed), so shipped weights load by name and the
    learner's recomputed log-probs match the rollout's (ratio 1 on the first inner step).
    """

    def __init__(self, policy, sampling, clip, seed: int = 0, keep_log_prob_maps: bool = False):
        torch.set_num_threads(policy.torch_threads)
        self.device = assigned_device()
        self.policy, _ = load_policy(policy, seed=seed, device=self.device)
        self.policy.requires_grad_(False).eval()
        self.sigmas = sampling_sigmas(sampling.num_steps, sampling.shift)
        self.noise_level = sampling.noise_level
        self.clip_shape = clip.shape
        self.keep_log_prob_maps = keep_log_prob_maps
        self.offloader = Offloader(self.device).manage(self.policy.transformer, self.policy.vae, getattr(self.policy, "motion_branch", None))
        self.weights_version = 0

    def set_weights(self, state: dict[str, torch.Tensor], version: int) -> int:
        missing = set(state) - set(dict(self.policy.named_parameters()))
        if missing:
            raise KeyError(f"weights for unknown parameters: {sorted(missing)[:5]}")
        self.policy.load_state_dict(state, strict=False)
        self.weights_version = version
        return version

    def sample(self, prompts: list[str], group_size: int, seed: int, expected_version: int) -> tuple[torch.Tensor, Trajectories, int]:
        """(videos uint8 [P·G, T, H, W, 3], trajectories, weights version); group members are
        consecutive. Call with `num_returns=3`: the driver waits on the small version only."""
        if self.weights_version != expected_version:
            raise StaleWeightsError(f"rollout holds weights v{self.weights_version}, driver expects v{expected_version}")
        repeated = [p for p in prompts for _ in range(group_size)]
        trajectories = sample_trajectories(
            self.policy, repeated, self.sigmas, self.noise_level, self.clip_shape, torch.Generator().manual_seed(seed),
            keep_log_prob_maps=self.keep_log_prob_maps,
        )
        trajectories.weights_version = self.weights_version
        self._maybe_crash()
        return trajectories.videos, trajectories, self.weights_version

    def placement(self) -> dict[str, str]:
        return {"device": str(self.device), **tensor_devices(
            transformer=self.policy.transformer.parameters(), vae=self.policy.vae.parameters())}

    def ping(self) -> int:
        return self.weights_version
