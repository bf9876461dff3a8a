"""Stage III on the toy world (issue 12's Show, second bullet): DPO on temporal negatives, measured.

    python -m bench.dpo_toy [--seeds 3] [--steps 30] [--stage2 grpo|base] [--grpo-steps 30] [--quick]
                            [--resume] [--out runs/show/dpo_toy] [--plot docs/dpo_toy.png]

Stage II. `--stage2 grpo` (default) first runs ONE GRPO run (`cluster.grpo.GRPODriver`, seed 0,
configs/toy.yaml's GRPO settings written out below) from the shipped base model (assets/toy_base);
its final checkpoint is the starting point and frozen reference of every DPO seed. `--stage2 base`
uses the base model itself as "Stage II" (what `--quick` does, to stay fast).

Stage III. Per seed, one run of the DPO driver (`cluster.dpo.DPODriver`) from that checkpoint
(`policy.init_from`), on synthetic temporal negatives only (§4.2 item 2: reversal, local shuffle,
freeze of rendered toy clips of moving or still objects; `dpo.pairs.on_policy.enabled: false`),
configs/toy.yaml's DPO settings (batch 4, lr 1e-4, β 5000 annealed to 2500 over the run).
The seed sets the training clips, the perturbations, the held-out clips and every (σ, ε) draw.

Measured per seed, DPO vs its starting checkpoint:
1. held-out implicit accuracy, as the driver logs it (`held_out/implicit_accuracy`, at β's floor,
   on the pairs of `held_out_clips` held-out clips): 0 at step 0, where policy = reference and
   every margin is exactly 0; then every `eval_every` steps. A pair whose perturbation leaves the
   clip unchanged (reversing or freezing a still object) has margin 0 forever, so the reachable
   maximum is the share of pairs with winner ≠ loser, reported beside it.
2. the model's own preference on the same held-out pairs, free of the reference: the share of
   informative pairs whose winner it denoises better (mean error over 4 fixed (σ, ε) draws per pair
   lower for the winner), for the starting checkpoint and for DPO. Unlike 1, this is not 0 by
   construction for the starting checkpoint.
3. the rate of reversed or frozen motion in SAMPLES (ODE, noise level 0, as `cluster.evaluate`),
   on every held-out prompt of a moving object (`load_prompts(..., split="held_out")`, motion ≠
   static), `--draws` noise draws per prompt and seed, by the motion critic
   (`build_critic("motion")`): reversed = `time_direction` < 0.5 (the critic reads the clip as
   playing backwards), frozen = `frozen_frames` < 1 (at least one repeated frame pair); and,
   because the critic's arrow of time reads dissipation and rigid motion is time-symmetric (the
   calibration rows show what it says on rendered clips and their reversals), a second reversal
   test by the toy world's verifiable direction judge: reversed = the clip played backwards
   scores higher on the prompt's direction than the clip itself.
Seeds are the independent units: mean over seeds with 95 % t-intervals, paired differences (same
seed: same prompts, noise draws, pairs), seeds better. Written to `<out>/results.md` and
`<out>/results.json`; curves to `--plot`.

Limits: one Stage II run serves all seeds, so the intervals cover DPO's randomness, not GRPO's;
world.kinds is toy.yaml's `object` (about one clip in five stands still, so a fifth of the pairs
cannot be told apart); 3 seeds separate only large effects.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.sft_ablation import interval, paired, per_seed

ROOT = Path(__file__).resolve().parents[1]
BASE_MODEL = ROOT / "assets" / "toy_base"
PREFERENCE_DRAWS = 4  # fixed (σ, ε) draws per held-out pair for the reference-free preference

# Written out so an edit of configs/toy.yaml cannot move this benchmark (values as toy.yaml's today).
COMMON = {
    "clip": {"num_frames": 9, "height": 32, "width": 32},
    "world": {"kinds": ["object"]},
    "policy": {"preset": "tiny", "model_path": str(BASE_MODEL), "trainable": "full", "torch_threads": 1},
    "sampling": {"num_steps": 10, "shift": 3.0, "noise_level": 0.7},
    "pool": {"num_bundles": 1, "placement": "colocated"},
    "rewards": {"critics": [{"name": "toy_judges"}, {"name": "perceptual"}],
                "components": {"overall": {"score": "toy_judges.overall"}}},
}
GRPO = {"prompts_per_step": 4, "group_size": 8, "prompt_pool": 4, "learning_rate": 3.0e-4, "clip_range": 1.0e-2,
        "kl_beta": 0.01, "kl_form": "exact", "eval_every": 5, "timestep_fraction": 0.6}
DPO = {"batch_size": 4, "learning_rate": 1.0e-4, "beta": {"start": 5000, "floor": 2500},
       "pairs": {"temporal": {"enabled": True, "clips": 24, "held_out_clips": 8}, "on_policy": {"enabled": False}}}


@dataclass(frozen=True)
class Budget:
    seeds: tuple[int, ...]
    steps: int
    eval_every: int
    grpo_steps: int
    stage2: str  # "grpo" or "base"
    draws: int
    prompts: int | None  # held-out moving-object prompts (None = all)
    clips: int
    held_out_clips: int


def grpo_config(budget: Budget, run_dir: Path):
    from cluster.config import parse_config

    grpo = {**GRPO, "steps": budget.grpo_steps, "checkpoint_every": budget.grpo_steps, "keep_checkpoints": 1,
            "eval_every": min(GRPO["eval_every"], budget.grpo_steps)}
    return parse_config({**COMMON, "run_dir": str(run_dir), "seed": 0, "grpo": grpo})


def dpo_config(budget: Budget, seed: int, stage2: str | None, run_dir: Path):
    from cluster.config import parse_config

    temporal = {**DPO["pairs"]["temporal"], "clips": budget.clips, "held_out_clips": budget.held_out_clips}
    dpo = {**DPO, "steps": budget.steps, "eval_every": budget.eval_every, "checkpoint_every": budget.steps,
           "keep_checkpoints": 1, "beta": {**DPO["beta"], "anneal_steps": budget.steps},
           "pairs": {**DPO["pairs"], "temporal": temporal}}
    policy = {**COMMON["policy"], "init_from": stage2}
    return parse_config({**COMMON, "run_dir": str(run_dir), "seed": seed, "policy": policy, "dpo": dpo})


def run(driver_cls, config, resume: bool) -> list[dict]:
    """Run one stage (or, with `resume`, read back a finished run of the same config)."""
    from cluster.runtime import run_stage

    done = Path(config.run_dir) / "bench_run.json"
    wanted = {**config.model_dump(mode="json"), "run_dir": None}
    if resume and done.exists():
        stored = json.loads(done.read_text())
        if stored.get("config") == wanted:
            return stored["records"]
    records = run_stage(driver_cls(config))
    done.write_text(json.dumps({"config": wanted, "records": records}))
    return records


# ----------------------------------------------------------------------------------------------
# Evaluation


def load(config, init_from: str | None):
    from policy.wan import load_policy

    policy, _ = load_policy(config.policy.model_copy(update={"init_from": init_from}), seed=config.seed)
    return policy.requires_grad_(False).eval()


def moving_prompts(config, limit: int | None) -> list[str]:
    """Every distinct held-out prompt of a moving object, in a fixed order."""
    from cluster.prompts import load_prompts
    from toyworld.prompts import parse

    drawn = dict.fromkeys(load_prompts(config, 512, seed=0, split="held_out"))
    prompts = [p for p in drawn if parse(p).kind == "object" and parse(p).motion != "static"]
    return prompts[:limit] if limit else prompts


def motion_flags(videos: torch.Tensor, prompts: list[str], critic) -> dict[str, torch.Tensor]:
    """Per video (uint8 [B, T, H, W, 3]): the critic's scores and reversal/freeze flags, and the
    direction judge's reversal flag (the clip played backwards follows the prompt better)."""
    from evaluation.vbench import toy_scores

    scores = critic.score(videos, prompts).scores
    forward = toy_scores(videos, prompts)["direction"]
    backward = toy_scores(videos.flip(1), prompts)["direction"]
    reversed_critic = scores["time_direction"] < 0.5
    frozen = scores["frozen_frames"] < 1.0
    return {"time_direction": scores["time_direction"].float(), "frozen_frames": scores["frozen_frames"].float(),
            "reversed_critic": reversed_critic.float(), "frozen": frozen.float(),
            "reversed_or_frozen": (reversed_critic | frozen).float(), "direction": forward.float(),
            "reversed_judge": (backward > forward).float(), "reversed_judge_or_frozen": ((backward > forward) | frozen).float()}


SAMPLE_KEYS = ("reversed_or_frozen", "reversed_critic", "frozen", "reversed_judge", "reversed_judge_or_frozen",
               "time_direction", "frozen_frames", "direction")


@torch.no_grad()
def sample_rates(policy, prompts: list[str], draws: list[int], config, critic) -> dict[str, float]:
    """Mean over prompts and noise draws of each flag/score of `motion_flags`."""
    from cluster.evaluate import sample_videos

    flags = [motion_flags(sample_videos(policy, prompts, seed, config), prompts, critic) for seed in draws]
    return {key: float(torch.cat([f[key] for f in flags]).mean()) for key in SAMPLE_KEYS}


def calibration(config, critic, count: int) -> dict[str, dict[str, float]]:
    """What the two reversal tests and the freeze test say on rendered held-out clips of moving
    objects and on their reversal and freezing (`data.pairs.temporal_negative_indices`)."""
    from data.pairs import temporal_negative_indices
    from toyworld.world import ToyWorld

    clips = [c for c in ToyWorld(*config.clip.shape, kinds=("object",), split="held_out").sample(count * 2, seed=7)
             if c.spec.motion != "static"][:count]
    videos = torch.stack([(c.video * 255).round().to(torch.uint8) for c in clips])
    prompts = [c.prompt for c in clips]
    frames = videos.shape[1]
    freeze = temporal_negative_indices(frames, "freeze", torch.Generator().manual_seed(0), 3, 0.5)
    out = {}
    for name, version in (("rendered", videos), ("reversed", videos.flip(1)), ("frozen", videos[:, freeze])):
        flags = motion_flags(version, prompts, critic)
        out[name] = {key: float(flags[key].mean()) for key in SAMPLE_KEYS}
    return out


@torch.no_grad()
def winner_preference(policy, pairs_root: Path, shift: float, seed: int) -> dict[str, float]:
    """Reference-free: share of informative held-out pairs (winner ≠ loser) whose winner the policy
    denoises better, mean error over PREFERENCE_DRAWS fixed (σ, ε) draws; and the informative share."""
    from algorithms.dpo import flow_matching_errors, make_preference_batch
    from data.pairs import PairDataset

    dataset = PairDataset(pairs_root)
    loaded = [dataset.load(i) for i in range(len(dataset))]
    winner = torch.stack([w for w, _ in loaded])
    loser = torch.stack([l for _, l in loaded])
    informative = torch.tensor([not torch.equal(w, l) for w, l in loaded])
    text = policy.encode_prompts([record.prompt for record in dataset.records])
    winner_latents = policy.encode_video(winner.float() / 255)
    loser_latents = policy.encode_video(loser.float() / 255)
    generator = torch.Generator().manual_seed(seed)
    gap = torch.zeros(len(dataset))
    for _ in range(PREFERENCE_DRAWS):
        batch = make_preference_batch(winner_latents, loser_latents, text, generator, shift=shift)
        err_w = flow_matching_errors(policy.velocity, batch.winner, batch.winner_noise, batch.sigma, batch.text)
        err_l = flow_matching_errors(policy.velocity, batch.loser, batch.loser_noise, batch.sigma, batch.text)
        gap += (err_w - err_l).cpu() / PREFERENCE_DRAWS
    prefers = (gap < 0) & informative
    return {"winner_preferred": float(prefers.sum() / informative.sum().clamp_min(1)),
            "informative_share": float(informative.float().mean())}


def held_out_series(records: list[dict], key: str = "held_out/implicit_accuracy") -> list[tuple[int, float]]:
    return [(int(r["step"]), float(r[key])) for r in records if r.get(key) is not None]


# ----------------------------------------------------------------------------------------------
# Report


def report(results: dict, budget: Budget, command: str, seconds: float) -> list[str]:
    seeds = list(budget.seeds)
    per = results["seeds"]
    stage2 = "the base model (no GRPO)" if budget.stage2 == "base" else f"one GRPO run of {budget.grpo_steps} steps from the base (seed 0)"
    lines = [f"# Stage III on the toy world: DPO on temporal negatives vs its starting checkpoint ({len(seeds)} seeds)", "",
             f"`{command}` — seeds {seeds}, {budget.steps} DPO steps per seed (batch 4, lr 1e-4, β 5000 → 2500), "
             f"starting checkpoint and reference: {stage2}; temporal pairs only ({budget.clips} training clips x "
             f"reverse/shuffle/freeze; {budget.held_out_clips} held-out clips). Run time {seconds / 60:.1f} min. Cells: "
             "mean over seeds [95 % t-interval]; paired = DPO − start on the same seed.", ""]
    if results.get("grpo"):
        g = results["grpo"]
        lines += [f"Stage II: GRPO fixed-seed eval reward {g['eval_start']:.3f} (step 0) → {g['eval_final']:.3f} "
                  f"(step {g['final_step']}).", ""]
    accuracy = [per[s]["held_out_accuracy"] for s in seeds]
    start_acc = [per[s]["held_out_accuracy_step0"] for s in seeds]
    margin = [per[s]["held_out_margin"] for s in seeds]
    ceiling = [per[s]["start_preference"]["informative_share"] for s in seeds]
    lines += ["## Held-out preference pairs", "",
              "| measure | start | DPO | DPO − start (paired) | seeds better | per seed (DPO) |", "| --- | --- | --- | --- | --- | --- |"]
    diff, better = paired(accuracy, start_acc, lower_is_better=False, digits=1, percent=True)
    lines.append(f"| held-out implicit accuracy (driver, vs the reference) | {interval(start_acc, 1, True)} | "
                 f"{interval(accuracy, 1, True)} | {diff} | {better} | {per_seed(accuracy, 1, True)} |")
    lines.append(f"| held-out reward margin (driver) | 0 | {interval(margin, 2)} | | | {per_seed(margin, 2)} |")
    lines.append(f"| reachable maximum of the accuracy: pairs with winner ≠ loser | | {interval(ceiling, 1, True)} | | | "
                 f"{per_seed(ceiling, 1, True)} |")
    start_pref = [per[s]["start_preference"]["winner_preferred"] for s in seeds]
    dpo_pref = [per[s]["dpo_preference"]["winner_preferred"] for s in seeds]
    diff, better = paired(dpo_pref, start_pref, lower_is_better=False, digits=1, percent=True)
    lines.append(f"| reference-free: informative pairs whose winner the model denoises better | "
                 f"{interval(start_pref, 1, True)} | {interval(dpo_pref, 1, True)} | {diff} | {better} | {per_seed(dpo_pref, 1, True)} |")
    n_prompts = len(results["prompts"])
    lines += ["", "## Reversed or frozen motion in samples", "",
              f"{n_prompts} held-out prompts of moving objects x {budget.draws} noise draws per seed, ODE sampling; "
              "rates are shares of samples (lower is better), scores are means (higher is better).", "",
              "| measure | start | DPO | DPO − start (paired) | seeds better | per seed: start / DPO |",
              "| --- | --- | --- | --- | --- | --- |"]
    labels = {
        "reversed_or_frozen": ("critic: reversed (time_direction < 0.5) or frozen (frozen_frames < 1)", True),
        "reversed_critic": ("critic: reversed, time_direction < 0.5", True),
        "frozen": ("critic: frozen, frozen_frames < 1", True),
        "reversed_judge": ("direction judge: plays better backwards", True),
        "reversed_judge_or_frozen": ("direction judge reversed, or critic frozen", True),
        "time_direction": ("critic time_direction (mean score)", False),
        "frozen_frames": ("critic frozen_frames (mean score)", False),
        "direction": ("toy direction judge (mean score)", False),
    }
    for key, (label, is_rate) in labels.items():
        start = [per[s]["start_samples"][key] for s in seeds]
        dpo = [per[s]["dpo_samples"][key] for s in seeds]
        digits = 1 if is_rate else 3
        diff, better = paired(dpo, start, lower_is_better=is_rate, digits=digits, percent=is_rate)
        lines.append(f"| {label} | {interval(start, digits, is_rate)} | {interval(dpo, digits, is_rate)} | {diff} | {better} | "
                     f"{per_seed(start, digits, is_rate)} / {per_seed(dpo, digits, is_rate)} |")
    calib = results["calibration"]
    lines += ["", "Calibration on rendered held-out clips of moving objects (what each test says on known cases):", "",
              "| clips | critic reversed | critic frozen | judge reversed | mean time_direction |", "| --- | --- | --- | --- | --- |"]
    for name, values in calib.items():
        lines.append(f"| {name} | {100 * values['reversed_critic']:.0f}% | {100 * values['frozen']:.0f}% | "
                     f"{100 * values['reversed_judge']:.0f}% | {values['time_direction']:.3f} |")
    lines.append("")
    return lines


def plot(results: dict, budget: Budget, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = list(budget.seeds)
    per = results["seeds"]
    panels = ["accuracy", "loss", "rates"] + (["grpo"] if results.get("grpo") else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 3.8), squeeze=False)

    def band(ax, x, values, label, colour, marker=None):
        values = np.asarray(values, dtype=float)
        mean = values.mean(0)
        ax.plot(x, mean, color=colour, label=label, marker=marker, ms=3)
        if values.shape[0] > 1:
            ax.fill_between(x, mean - values.std(0), mean + values.std(0), color=colour, alpha=0.15)

    for ax, panel in zip(axes[0], panels):
        if panel == "accuracy":
            series = [held_out_series(per[s]["records"]) for s in seeds]
            band(ax, [k for k, _ in series[0]], [[v for _, v in sr] for sr in series], "held-out (driver)", "tab:red", "o")
            train = [[r["implicit_accuracy"] for r in per[s]["records"] if "implicit_accuracy" in r and r["step"] > 0] for s in seeds]
            band(ax, list(range(1, len(train[0]) + 1)), train, "training batch", "tab:blue")
            ax.axhline(float(np.mean([per[s]["start_preference"]["informative_share"] for s in seeds])), color="k", ls=":",
                       lw=1, label="reachable max (winner ≠ loser)")
            ax.set(title="implicit accuracy", xlabel="DPO step", ylim=(-0.05, 1.05))
        elif panel == "loss":
            recs = [[r for r in per[s]["records"] if "loss" in r and r["step"] > 0] for s in seeds]
            band(ax, [r["step"] for r in recs[0]], [[r["loss"] for r in rr] for rr in recs], "loss", "tab:blue")
            margin = [held_out_series(per[s]["records"], "held_out/reward_margin") for s in seeds]
            twin = ax.twinx()
            band(twin, [k for k, _ in margin[0]], [[v for _, v in m] for m in margin], "held-out margin", "tab:red", "o")
            twin.set_ylabel("held-out reward margin", color="tab:red")
            ax.set(title="DPO loss (training) and held-out margin", xlabel="DPO step", ylabel="loss")
        elif panel == "rates":
            keys = ["reversed_or_frozen", "reversed_critic", "frozen", "reversed_judge"]
            x = np.arange(len(keys))
            for offset, (who, colour) in ((-0.2, ("start_samples", "tab:gray")), (0.2, ("dpo_samples", "tab:red"))):
                values = np.array([[per[s][who][k] for k in keys] for s in seeds])
                ax.bar(x + offset, values.mean(0), 0.4, yerr=values.std(0) if len(seeds) > 1 else None, color=colour,
                       label="start" if who == "start_samples" else "DPO", capsize=3)
            ax.set_xticks(x, ["rev. or frozen\n(critic)", "reversed\n(critic)", "frozen\n(critic)", "reversed\n(judge)"], fontsize=7)
            ax.set(title="held-out moving-object samples: rates", ylabel="share of samples")
        elif panel == "grpo":
            recs = results["grpo"]["records"]
            evals = [(r["step"], r["eval_reward"]) for r in recs if r.get("eval_reward") is not None]
            ax.plot([r["step"] for r in recs if "reward_mean" in r], [r["reward_mean"] for r in recs if "reward_mean" in r],
                    color="tab:blue", label="rollout reward")
            ax.plot([s for s, _ in evals], [v for _, v in evals], "o-", color="tab:green", ms=3, label="fixed-seed eval")
            ax.set(title="Stage II: GRPO from the base (seed 0)", xlabel="GRPO step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"DPO on temporal negatives, toy world (mean ± std over {len(seeds)} seed(s))", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Main


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="DPO seeds (0..n-1)")
    parser.add_argument("--steps", type=int, default=30, help="DPO steps per seed")
    parser.add_argument("--stage2", choices=("grpo", "base"), default=None, help="starting checkpoint (default grpo; --quick: base)")
    parser.add_argument("--grpo-steps", type=int, default=30, help="steps of the Stage II GRPO run")
    parser.add_argument("--draws", type=int, default=2, help="noise draws per held-out prompt and seed")
    parser.add_argument("--quick", action="store_true", help="smoke run (tests): 1 seed, 2 steps, base as Stage II, under <out>/quick")
    parser.add_argument("--out", default=str(ROOT / "runs" / "show" / "dpo_toy"))
    parser.add_argument("--plot", default=None, help="PNG of the curves (default docs/dpo_toy.png; --quick: <out>/quick/)")
    parser.add_argument("--resume", action="store_true", help="reuse finished runs of the same config")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.quick:
        out = out / "quick"
        budget = Budget(seeds=(0,), steps=2, eval_every=1, grpo_steps=min(args.grpo_steps, 2), stage2=args.stage2 or "base",
                        draws=1, prompts=4, clips=4, held_out_clips=2)
    else:
        budget = Budget(seeds=tuple(range(args.seeds)), steps=args.steps, eval_every=max(1, args.steps // 6),
                        grpo_steps=args.grpo_steps, stage2=args.stage2 or "grpo", draws=args.draws, prompts=None,
                        clips=DPO["pairs"]["temporal"]["clips"], held_out_clips=DPO["pairs"]["temporal"]["held_out_clips"])
    plot_path = Path(args.plot) if args.plot else (out / "dpo_toy.png" if args.quick else ROOT / "docs" / "dpo_toy.png")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    log = logging.getLogger("bench.dpo_toy")
    torch.set_num_threads(1)
    started = time.time()
    from cluster.dpo import DPODriver
    from reward_services.base import build_critic

    results: dict = {"seeds": {}}
    stage2_dir = None
    if budget.stage2 == "grpo":
        from cluster.grpo import GRPODriver

        config = grpo_config(budget, out / "stage2_grpo")
        log.info("Stage II: GRPO, %d steps", budget.grpo_steps)
        records = run(GRPODriver, config, args.resume)
        evals = [r for r in records if r.get("eval_reward") is not None]
        results["grpo"] = {"records": records, "eval_start": evals[0]["eval_reward"], "eval_final": evals[-1]["eval_reward"],
                           "final_step": evals[-1]["step"]}
        stage2_dir = str(config.run_dir)
    critic = build_critic("motion")
    config = dpo_config(budget, 0, stage2_dir, out / "dpo" / "seed0")
    prompts = moving_prompts(config, budget.prompts)
    results["prompts"] = prompts
    results["calibration"] = calibration(config, critic, count=len(prompts) if budget.prompts is None else 4)
    start = load(config, stage2_dir)
    for seed in budget.seeds:
        config = dpo_config(budget, seed, stage2_dir, out / "dpo" / f"seed{seed}")
        log.info("DPO seed %d: %d steps", seed, budget.steps)
        records = run(DPODriver, config, args.resume)
        dpo = load(config, str(config.run_dir))
        draws = [1000 * seed + d for d in range(budget.draws)]
        accuracy = held_out_series(records)
        margin = held_out_series(records, "held_out/reward_margin")
        held_out = Path(config.run_dir) / "pairs_heldout"
        results["seeds"][seed] = {
            "records": records,
            "held_out_accuracy_step0": accuracy[0][1], "held_out_accuracy": accuracy[-1][1], "held_out_margin": margin[-1][1],
            "start_preference": winner_preference(start, held_out, config.sampling.shift, seed),
            "dpo_preference": winner_preference(dpo, held_out, config.sampling.shift, seed),
            "start_samples": sample_rates(start, prompts, draws, config, critic),
            "dpo_samples": sample_rates(dpo, prompts, draws, config, critic),
        }
        del dpo
    seconds = time.time() - started
    command = "python -m bench.dpo_toy " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    lines = report(results, budget, command.strip(), seconds)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"budget": budget.__dict__, "seconds": seconds, **results}, default=str))
    plot(results, budget, plot_path)
    print("\n".join(lines))
    print(f"results: {out / 'results.md'}; curves: {plot_path}")
    return results


if __name__ == "__main__":
    main()
