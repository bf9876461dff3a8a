"""The pipeline's evaluation: base → SFT → GRPO → DPO on the same held-out prompts and seeds.

Each stage's final policy (the base model, then each stage's newest checkpoint applied on it,
`policy.init_from`) samples every held-out prompt once per sampling seed with the ODE (noise
level 0), so a difference between two stages comes from their weights alone. Per stage it
records, as mean and 95 % t-interval over the seeds (`evaluation.vbench.summarize`):
- the VBench-style dimensions and the toy world's verifiable judges (`evaluation.vbench`);
- each stage's target metric (`target_metrics`): SFT's reward on instruction / control prompts
  and background warp error on camera prompts (report §2.2-2.3), GRPO's own reward (`grpo_reward`:
  the mean of the config's `rewards.components`, from the critics it trained against, on prompts
  it never trained on) and the toy judges' reward on object prompts, DPO's temporal ones — the motion critic's time direction and frozen
  frames (report §4.2's reversed and frozen negatives);
and automatic GSB (`evaluation.judge.AutoJudge`, report Table 1) of the final model against the
base and of each stage against the one before, plus GIFs of every (prompt, seed) per stage.

Seeds here are sampling seeds of ONE pipeline run: the intervals say how much the comparison
depends on the noise drawn, not on training randomness (the stage benchmarks under bench/
repeat training over seeds for that).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from actors.reward import RewardActor
from algorithms.sft import background_warp_error, estimate_global_shift
from cluster.prompts import load_prompts
from evaluation.gsb import GSBCounts
from evaluation.judge import AutoJudge
from evaluation.results import EvalResults, write_gif
from evaluation.vbench import evaluate_videos, summarize
from policy.sampling import sample_trajectories
from policy.wan import load_policy, sampling_sigmas
from reward_services.base import build_critic
from reward_services.config import component_rewards
from toyworld.prompts import parse
from toyworld.world import INSTRUCTION_KINDS

log = logging.getLogger("teleboost.evaluate")
CAMERA_KINDS = ("pan", "orbit")
CONTROL_KINDS = ("pan", *INSTRUCTION_KINDS)  # camera motion, event order, composition (§2.2)


def stage_policies(config, stage_dirs: dict[str, str | None]):
    """Yield (stage, policy) for the base (None) and each stage's run dir, one at a time."""
    for stage, run_dir in stage_dirs.items():
        policy_config = config.policy.model_copy(update={"init_from": run_dir})
        policy, _ = load_policy(policy_config, seed=config.seed)
        yield stage, policy.requires_grad_(False).eval()


@torch.no_grad()
def sample_videos(policy, prompts: list[str], seed: int, config) -> torch.Tensor:
    sigmas = sampling_sigmas(config.sampling.num_steps, config.sampling.shift)
    return sample_trajectories(policy, prompts, sigmas, 0.0, config.clip.shape, torch.Generator().manual_seed(seed)).videos


def target_metrics(videos: torch.Tensor, prompts: list[str], reward: torch.Tensor, motion_critic) -> dict[str, torch.Tensor]:
    """[B] per target metric (NaN where it does not apply to the prompt): the reward split into
    instruction / control prompts (what SFT teaches, §2.2) and plain object prompts (what GRPO
    optimises on the toy world), the camera prompts' background warp error (§2.3), and the
    motion critic's time direction and frozen frames (DPO's temporal negatives, §4.2)."""
    floats = videos.float() / 255
    kinds = [parse(p).kind for p in prompts]
    camera = torch.tensor([kind in CAMERA_KINDS for kind in kinds])
    instruction = torch.tensor([kind in CONTROL_KINDS for kind in kinds])
    warp = torch.full((len(prompts),), float("nan"))
    if camera.any():
        warp[camera] = background_warp_error(floats[camera], estimate_global_shift(floats[camera]))
    motion = motion_critic.score(videos, prompts).scores
    nan = torch.tensor(float("nan"))
    return {"reward_instruction": torch.where(instruction, reward, nan), "reward_object": torch.where(instruction, nan, reward),
            "camera_warp_error": warp, "time_direction": motion["time_direction"].float(),
            "frozen_frames": motion["frozen_frames"].float()}


def evaluate_pipeline(config, stage_dirs: dict[str, str | None], out_dir: str | Path) -> EvalResults:
    """Evaluate `stage_dirs` ({"base": None, "sft": run_dir, ...} in pipeline order) into
    `out_dir/eval.json` with GIFs under `out_dir/clips/<stage>/`."""
    out_dir = Path(out_dir)
    cfg = config.eval
    eval_config = config.model_copy(update={"world": config.world.model_copy(update={"kinds": cfg.kinds})})
    prompts = load_prompts(eval_config, cfg.prompts, seed=config.seed, split="held_out")
    judge, motion_critic = AutoJudge(tie_margin=cfg.tie_margin), build_critic("motion")
    rewarder = RewardActor(config.rewards)  # GRPO's own reward components, the critics it trained against
    metrics, clips, videos_by_stage = {}, {}, {}
    for stage, policy in stage_policies(config, stage_dirs):
        per_seed = [sample_videos(policy, prompts, seed, config) for seed in cfg.seeds]
        videos_by_stage[stage] = per_seed
        values: dict[str, list[torch.Tensor]] = {}
        for videos in per_seed:
            reward = judge.critic_scores(videos, prompts)["toy_judges.overall"]
            components, _ = component_rewards(rewarder.score(videos, prompts), config.rewards)
            scores = {**evaluate_videos(videos, prompts), "reward": reward, **target_metrics(videos, prompts, reward, motion_critic),
                      "grpo_reward": sum(components.values()) / len(components)}
            for name, value in scores.items():
                values.setdefault(name, []).append(value.float())
        metrics[stage] = {name: summarize(torch.stack(per)) for name, per in values.items()}
        clips[stage] = []
        for p in range(len(prompts)):
            for s, videos in enumerate(per_seed):
                relative = f"clips/{stage}/{p:03d}_seed{cfg.seeds[s]}.gif"
                write_gif(videos[p], out_dir / relative)
                clips[stage].append(relative)
        log.info("evaluated %s: reward %.4f", stage, metrics[stage]["reward"]["mean"])
    stages = list(stage_dirs)
    comparisons = {f"{stages[-1]}_vs_base": (stages[-1], "base")} if len(stages) > 1 else {}
    comparisons.update({f"{later}_vs_{earlier}": (later, earlier) for earlier, later in zip(stages, stages[1:])})
    gsb = {key: _gsb(judge, videos_by_stage[a], videos_by_stage[b], prompts) for key, (a, b) in comparisons.items()}
    results = EvalResults(prompts=prompts, seeds=list(cfg.seeds), stages=stages, metrics=metrics, gsb=gsb, clips=clips)
    results.save(out_dir / "eval.json")
    return results


def _gsb(judge: AutoJudge, videos_a: list, videos_b: list, prompts: list[str]) -> dict[str, GSBCounts]:
    """Aspect → G/S/B of A against B, summed over the seeds (one judgement per prompt and seed)."""
    total: dict[str, GSBCounts] = {}
    for a, b in zip(videos_a, videos_b):
        for aspect, counts in judge.compare(a, b, prompts).items():
            previous = total.get(aspect, GSBCounts(good=0, same=0, bad=0))
            total[aspect] = GSBCounts(good=previous.good + counts.good, same=previous.same + counts.same,
                                      bad=previous.bad + counts.bad)
    return total
