"""The toy world's verifiable judges behind the critic interface (the VLM judge's stand-in)."""

from __future__ import annotations

import torch

from reward_services.base import Critic, CriticOutput
from toyworld.judges import JUDGES, judge_all
from toyworld.prompts import parse

TOY_SCORES = (*JUDGES, "overall")


class ToyJudges(Critic):
    """Scores colour, shape, motion direction, count and smoothness from pixels against the prompt."""

    name = "toy_judges"
    score_names = TOY_SCORES

    def refuses(self, prompts) -> str | None:
        for index, prompt in enumerate(prompts):
            try:
                parse(prompt)
            except ValueError:
                return f"prompts[{index}] is not a toy-world prompt (e.g. 'a red square moves left on a gray background')"
        return None

    def _score(self, videos: torch.Tensor, prompts: list[str], first_frames) -> CriticOutput:
        return CriticOutput(scores={key: value.float() for key, value in judge_all(videos, prompts).items()})
