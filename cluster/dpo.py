"""Stage III driver: Diffusion-DPO against the frozen previous stage (report §4, §6.2) — pairs → update.

Before training, the preference dataset is built once on disk under `run_dir/pairs` (a marker
file makes a resumed run reuse it, so it sees exactly the same pairs), from three sources (§4.2):
1. synthetic temporal negatives: the toy world's rendered clips vs their reversal, local frame
   shuffling or freezing (and the same from held-out prompts under `run_dir/pairs_heldout`,
   never trained on, for held-out implicit accuracy);
2. on-policy hard negatives (`dpo.pairs.on_policy`): groups sampled from the starting policy by
   the rollout actors and scored by the reward actors where they lie (the same phases as GRPO),
   ranked by an ensemble of critics, keeping pairs that both follow the prompt and differ clearly;
3. human pairs from JSONL, validated row by row (rejected rows logged with their row numbers).

Then every step each learner streams its shard of the step's pair batch and takes one
synchronised optimizer step in the configured backward mode; β follows `dpo.beta`'s schedule.
The reference is the policy this stage starts from (`policy.init_from`, the Stage II run): a
frozen copy, or with LoRA the same transformer with adapters off; `reference_refresh_every`
makes it online DPO. Logs per step: loss, implicit accuracy, reward margin, each error term, β;
every `eval_every` steps the held-out implicit accuracy and margin. Checkpoints and `--resume`
as every stage. Limits: those of the runtime; on-policy pairs are built once, from the starting
policy, not refreshed during training.
"""

from __future__ import annotations

import json
import logging
import shutil

import ray
import torch

from actors.learner import OptimizerSpec
from actors.objectives.dpo import DPOObjective
from actors.rollout import RolloutActor
from algorithms.dpo import select_hard_negatives
from cluster.config import TeleBoostConfig
from cluster.group_phases import GroupPhases
from cluster.pool import PhaseTimeline
from cluster.progress import progress_bar
from cluster.prompts import load_prompts
from cluster.run_log import plot_curves
from cluster.runtime import StageRuntime, run_stage
from data.pairs import PairWriter, import_human_pairs, make_temporal_pairs, on_policy_pairs
from toyworld.world import ToyWorld

log = logging.getLogger("teleboost.dpo")
BUILT = "built.json"


def dpo_objective(config: TeleBoostConfig, pairs_root: str) -> DPOObjective:
    cfg = config.dpo
    shape = (cfg.train_frames, cfg.train_height, cfg.train_width) if cfg.train_frames else None
    return DPOObjective(pairs_root=pairs_root, batch_size=cfg.batch_size, seed=config.seed, shift=config.sampling.shift,
                        mode=cfg.mode, beta=cfg.beta, train_shape=shape)


class DPODriver(GroupPhases, StageRuntime):
    stage = "dpo"
    phase_roles = {"sample": ("rollout",), "evaluate": ("reward",), "update": ("learner",)}

    def setup(self) -> None:
        self.start()
        cfg = self.config
        self.pairs_root, self.held_out_root = self.run_dir / "pairs", self.run_dir / "pairs_heldout"
        self.rollouts = {}
        if cfg.dpo.pairs.on_policy.enabled:
            self.rollouts = self.place("rollout", RolloutActor, cfg.policy, cfg.sampling, cfg.clip, cfg.seed,
                                       bundles=self.pool.main_bundles())
            self.place_reward_role()
        self.place_learners(dpo_objective(cfg, str(self.pairs_root)), OptimizerSpec.of(cfg.dpo))
        state = self.restore()
        self.start_step = state["step"] if state else 0
        self.version = self.sync_weights()
        self.pair_counts = self.build_pairs()

    # -- the loop ---------------------------------------------------------------------------
    def train(self) -> list[dict]:
        cfg = self.config.dpo
        if cfg.eval_every and self.start_step == 0 and self.pair_counts.get("held_out"):
            self.metrics.write({"step": 0, **self.evaluate_held_out()})  # the reference itself: accuracy 0, margin 0
        with progress_bar("DPO", cfg.steps, self.start_step) as advance:
            for step in range(self.start_step + 1, cfg.steps + 1):
                timeline = PhaseTimeline(self.pool.all_bundles())
                # pairs → update: each learner streams its shard of pair batch `step`, all take one step
                update = self.learner_step(timeline, step, cfg.batch_size)
                record = {"step": step, **update, **{f"pairs/{k}": v for k, v in self.pair_counts.items()}}
                if cfg.reference_refresh_every and step % cfg.reference_refresh_every == 0:
                    ray.get([learner.refresh_reference.remote() for learner in self.learners.handles.values()])
                if cfg.eval_every and self.pair_counts.get("held_out") and (step % cfg.eval_every == 0 or step == cfg.steps):
                    record.update(self.evaluate_held_out())
                record = self.record_step(record, timeline)
                log.info("step %d/%d loss %.4f implicit accuracy %.3f margin %.4g β %.0f", step, cfg.steps, record["loss"],
                         record["implicit_accuracy"], record["reward_margin"], record["beta"])
                if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                    self.save(step, {"pair_counts": self.pair_counts}, keep=cfg.keep_checkpoints)
                advance()
        records = self.metrics.records()
        if records:
            plot_curves(records, ["implicit_accuracy", "held_out/implicit_accuracy"], self.run_dir / "accuracy_curve.png",
                        "DPO: implicit accuracy on training and held-out pairs")
        return records

    def evaluate_held_out(self) -> dict[str, float]:
        result = ray.get(self.learner.evaluate.remote(pairs_root=str(self.held_out_root)))
        return {f"held_out/{key}": value for key, value in result.items()}

    # -- the preference dataset (report §4.2) -----------------------------------------------
    def build_pairs(self) -> dict[str, int]:
        """Write the three sources' pairs once; a later (resumed) run reads the counts back."""
        marker = self.pairs_root / BUILT
        if marker.exists():
            return json.loads(marker.read_text())
        for root in (self.pairs_root, self.held_out_root):  # a build cut short is rebuilt whole
            shutil.rmtree(root, ignore_errors=True)
        counts: dict[str, int] = {}
        pairs = self.config.dpo.pairs
        writer = PairWriter(self.pairs_root)
        if pairs.temporal.enabled and pairs.temporal.clips:
            counts["temporal"] = self.write_temporal(writer, pairs.temporal.clips, "temporal")
            if pairs.temporal.held_out_clips:
                counts["held_out"] = self.write_temporal(PairWriter(self.held_out_root), pairs.temporal.held_out_clips, "held_out")
        if pairs.on_policy.enabled:
            counts.update(self.write_on_policy(writer))
        if pairs.human:
            report = import_human_pairs(pairs.human, writer)
            for rejected in report.rejected:
                log.warning("human pairs %s row %d rejected: %s", pairs.human, rejected.row, rejected.reason)
            counts.update(human=len(report.imported), human_rejected=len(report.rejected))
        if not sum(v for k, v in counts.items() if k in ("temporal", "on_policy", "human")):
            raise ValueError(f"dpo.pairs produced no training pairs ({counts}); enable a source")
        marker.write_text(json.dumps(counts))
        log.info("preference pairs built: %s", counts)
        return counts

    def write_temporal(self, writer: PairWriter, num_clips: int, purpose: str) -> int:
        """Good clips (the toy world's rendered ground truth) vs their temporal perturbations."""
        cfg, temporal = self.config, self.config.dpo.pairs.temporal
        split = "held_out" if purpose == "held_out" else "train"
        clips = ToyWorld(*cfg.clip.shape, kinds=cfg.world.kinds, split=split).sample(num_clips, seed=self.step_seed(purpose, "clips"))
        videos = [(clip.video * 255).round().to(torch.uint8) for clip in clips]
        made = make_temporal_pairs(videos, [clip.prompt for clip in clips],
                                   torch.Generator().manual_seed(self.step_seed(purpose, "perturb")),
                                   kinds=temporal.kinds, window=temporal.window, freeze_fraction=temporal.freeze_fraction)
        for pair in made:
            writer.append(pair)
        return len(made)

    def write_on_policy(self, writer: PairWriter) -> dict[str, int]:
        """Groups from the starting policy, scored by the reward actors; the selection's counts."""
        on_policy = self.config.dpo.pairs.on_policy
        prompts = load_prompts(self.config, on_policy.prompts, seed=self.step_seed("on_policy", "prompts"))
        timeline = PhaseTimeline(self.pool.all_bundles())
        shards = self.shard(prompts)
        video_refs, _ = self.sample(timeline, shards, "on_policy", on_policy.group_size)
        scores = self.score(timeline, video_refs, shards, on_policy.group_size)
        videos = torch.cat(ray.get(video_refs))  # pairs are written to disk by the driver, once
        counts = dict.fromkeys(("considered", "rejected_agreement", "rejected_gap", "kept"), 0)
        for index, prompt in enumerate(prompts):
            group = slice(index * on_policy.group_size, (index + 1) * on_policy.group_size)
            quality = torch.stack([scores[name][group] for name in on_policy.quality])
            selection = select_hard_negatives(quality, scores[on_policy.agreement][group], on_policy.agreement_threshold,
                                              on_policy.gap_threshold, on_policy.max_pairs_per_group)
            for pair in on_policy_pairs(prompt, videos[group], selection.pairs):
                writer.append(pair)
            for key in counts:
                counts[key] += int(getattr(selection, key))
        return {"on_policy": counts["kept"], **{f"on_policy_{key}": value for key, value in counts.items() if key != "kept"}}


def run(config: TeleBoostConfig, resume: bool = False) -> list[dict]:
    return run_stage(DPODriver(config, resume=resume))
