"""Automatic Good-Same-Bad judge for the toy world (stand-in for report §7.1's human annotators).

Each of Table 1's aspects is scored per video as the mean of critic scores (all in [0, 1], higher =
better) that measure what the report's aspect definition asks about:

| aspect          | report §7.1                                      | critic scores averaged                          |
| --------------- | ------------------------------------------------ | ----------------------------------------------- |
| visual_quality  | sharpness, absence of visual artefacts           | perceptual.sharpness, .noise, .blockiness        |
| motion_quality  | temporal coherence, smoothness                   | toy_judges.smoothness, motion.temporal_smoothness, perceptual.flicker |
| text_alignment  | video matches the prompt                         | toy_judges.color, .shape, .motion, .count        |
| preservation    | subjects and content stable across time          | motion.warp_error (each frame = previous moved)  |
| overall         | holistic                                         | mean of the four aspect scores above             |

Toy judges that do not apply to a prompt's scene (count on a pan, shape on a fluid) are left out
of the mean rather than read as `judge_all`'s substituted overall score. Two videos of the same
prompt (and seed) are then compared per aspect: Good when A's score exceeds B's by more than
`tie_margin`, Bad when B's exceeds A's by more, Same otherwise — the margin plays the annotator's
"cannot tell them apart". Needs toy-grammar prompts (the toy judges parse them).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from evaluation.gsb import ASPECTS, GSBCounts
from reward_services.base import build_critic
from toyworld.judges import APPLICABLE_JUDGES
from toyworld.prompts import parse

ASPECT_SCORES: dict[str, tuple[str, ...]] = {
    "visual_quality": ("perceptual.sharpness", "perceptual.noise", "perceptual.blockiness"),
    "motion_quality": ("toy_judges.smoothness", "motion.temporal_smoothness", "perceptual.flicker"),
    "text_alignment": ("toy_judges.color", "toy_judges.shape", "toy_judges.motion", "toy_judges.count"),
    "preservation": ("motion.warp_error",),
}
# time_direction is not used by any aspect; skipping it saves the backward flow pass
CRITIC_OPTIONS: dict[str, dict] = {"toy_judges": {}, "perceptual": {}, "motion": {"time_direction": False}}


def compare_scores(
    scores_a: dict[str, torch.Tensor], scores_b: dict[str, torch.Tensor], tie_margin: float = 0.02
) -> dict[str, GSBCounts]:
    """Per aspect, G/S/B counts of A against B from paired per-video scores [B].

    A pair with a NaN score (nothing to judge) counts as Same.
    """
    if tie_margin < 0:
        raise ValueError(f"tie_margin={tie_margin} must be >= 0")
    counts = {}
    for aspect, a in scores_a.items():
        difference = a.double() - scores_b[aspect].double()
        good = int((difference > tie_margin).sum())
        bad = int((difference < -tie_margin).sum())
        counts[aspect] = GSBCounts(good=good, same=difference.numel() - good - bad, bad=bad)
    return counts


class AutoJudge:
    """Builds the critics once; `compare(videos_a, videos_b, prompts)` -> {aspect: GSBCounts}."""

    def __init__(self, tie_margin: float = 0.02, critic_options: dict[str, dict] | None = None):
        options = {**CRITIC_OPTIONS, **(critic_options or {})}
        self.critics = {name: build_critic(name, **options[name]) for name in CRITIC_OPTIONS}
        self.tie_margin = tie_margin

    def critic_scores(self, videos, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """{"critic.score": [B]}, NaN where a toy judge does not apply to the prompt's scene."""
        kinds = [parse(prompt).kind for prompt in prompts]
        scores = {}
        for name, critic in self.critics.items():
            for key, value in critic.score(torch.as_tensor(videos), list(prompts)).scores.items():
                if name == "toy_judges" and key != "overall":
                    applies = torch.tensor([key in APPLICABLE_JUDGES[kind] for kind in kinds])
                    value = torch.where(applies, value, torch.tensor(math.nan))
                scores[f"{name}.{key}"] = value.float()
        return scores

    def aspect_scores(self, videos, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """{aspect: [B]} in `ASPECTS` order: the NaN-ignoring mean of each aspect's critic scores."""
        scores = self.critic_scores(videos, prompts)
        out = {aspect: torch.stack([scores[key] for key in keys]).nanmean(dim=0) for aspect, keys in ASPECT_SCORES.items()}
        out["overall"] = torch.stack(list(out.values())).nanmean(dim=0)
        return {aspect: out[aspect] for aspect in ASPECTS}

    def compare(self, videos_a, videos_b, prompts: Sequence[str]) -> dict[str, GSBCounts]:
        """G/S/B per aspect of A against B; videos_a[i] and videos_b[i] share prompts[i] (and seed)."""
        if torch.as_tensor(videos_a).shape != torch.as_tensor(videos_b).shape:
            raise ValueError(
                f"videos_a {tuple(torch.as_tensor(videos_a).shape)} and videos_b "
                f"{tuple(torch.as_tensor(videos_b).shape)} must pair up video by video"
            )
        return compare_scores(self.aspect_scores(videos_a, prompts), self.aspect_scores(videos_b, prompts), self.tie_margin)
