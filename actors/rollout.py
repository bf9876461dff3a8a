"""RolloutActor: holds a no-grad copy of the policy and samples groups of videos with log-probs."""

from __future__ import annotations

import torch

from actors.faults import CrashOnRequest
from actors.offload import Offloadable
from cluster.config import TeleBoostConfig
from policy.sampling import Trajectories, sample_trajectories
from policy.wan import build_policy, sampling_sigmas, select_trainable


class StaleWeightsError(RuntimeError):
    pass


class RolloutActor(Offloadable, CrashOnRequest):
    """Samples G videos per prompt. Refuses to sample with weights older than the driver expects."""

    def __init__(self, config: TeleBoostConfig):
        torch.set_num_threads(config.policy.torch_threads)
        self.config = config
        self.policy = build_policy(config.policy.preset, config.policy.model_path, config.policy.dtype, seed=config.seed)
        # Same trainable structure as the learner (e.g. LoRA adapters), so shipped names match.
        select_trainable(self.policy, config.policy.trainable, config.policy.lora_rank)
        self.policy.requires_grad_(False).eval()
        self.sigmas = sampling_sigmas(config.sampling.num_steps, config.sampling.shift)
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
        world = self.config.world
        repeated = [p for p in prompts for _ in range(group_size)]
        trajectories = sample_trajectories(
            self.policy, repeated, self.sigmas, self.config.sampling.noise_level,
            (world.num_frames, world.height, world.width), torch.Generator().manual_seed(seed),
            keep_log_prob_maps=self.config.grpo.vipo.lam > 0,
        )
        trajectories.weights_version = self.weights_version
        self._maybe_crash()
        return trajectories.videos, trajectories, self.weights_version

    def ping(self) -> int:
        return self.weights_version
