"""A critic for failure injection, loaded into Serve replicas through `extra_critic_modules`.

Prompt "__raise__" makes it raise RuntimeError (a crashing critic -> 500); prompt "__slow__"
makes it sleep SLOW_SECONDS (-> 504 under a short request_timeout_s). Otherwise it scores each
video's mean brightness.
"""

import time

import torch

from reward_services.base import Critic, CriticOutput, register_critic

SLOW_SECONDS = 2.0


@register_critic
class FailingCritic(Critic):
    """Mean brightness, except on the magic prompts."""

    name = "failing"
    score_names = ("brightness",)

    def _score(self, videos: torch.Tensor, prompts: list[str], first_frames) -> CriticOutput:
        if "__raise__" in prompts:
            raise RuntimeError("injected failure")
        if "__slow__" in prompts:
            time.sleep(SLOW_SECONDS)
        return CriticOutput(scores={"brightness": videos.mean(dim=(1, 2, 3, 4))})
