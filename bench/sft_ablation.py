"""Stage I on the toy world (issue 13's Show): structure-aware and physics-aware SFT, measured.

    python -m bench.sft_ablation [--seeds 3] [--steps 80] [--only a,b] [--quick] [--resume]
                                 [--out runs/show/sft_ablation] [--plot docs/sft_ablation.png]

Every arm is a real run of the SFT driver (`cluster.sft.SFTDriver`) on ONE local Ray cluster,
started once, from the shipped base model (assets/toy_base, pretrained on moving objects only).
Arms of an ablation share each seed (hence every batch, noise level and noise draw: the batches
are a function of (seed, rank, step)) and the step budget, and differ only in the switch under
test. Each run checkpoints every `steps // 4` steps; every checkpoint (and the base, as step 0)
is evaluated, which draws the curves.

(a) Structure-aware vs unweighted SFT (§2.3). Full transformer, lr 1e-4, batch 8, data of kinds
    pan, orbit and object (training split), `sft.structure.enabled` true vs false, no motion
    branch. Metric: the background warping error of GENERATED clips on every held-out camera
    prompt (`load_prompts(..., split="held_out")` with world.kinds = pan, orbit: 32 prompts),
    sampled with the ODE (noise level 0, as `cluster.evaluate` does) from `--draws` noise draws per
    prompt and seed, measured as `cluster.evaluate.target_metrics` does it:
    `background_warp_error(video, estimate_global_shift(video))` in px of misalignment, lower is
    better. Reported for pan + orbit (the evaluation's "camera" prompts), pans and orbits.
(b) Physics-aware SFT vs the base (§2.4). `policy.trainable: decoder` (only the VAE decoder,
    post_quant_conv and the motion branch train; transformer, text encoder and VAE encoder stay
    frozen), `sft.physics.enabled`, data of configs/toy.yaml's kinds (all six, fluid among them),
    motion-branch loss + decoder reconstruction loss. A control arm trains the same parameters on
    the same batches with the motion loss off (`sft.physics.motion_weight: 0`), so what the flow
    supervision adds is told apart from what fine-tuning the decoder on the toy world's data
    adds. Metric: held-out simulated fluid clips (`ToyWorld(kinds=("fluid",), split="held_out")`,
    exact flow), encoded by the frozen VAE encoder and decoded by each model's decoder; flow
    estimated from the decoded clip by Farneback (`evaluation.vbench.farneback_video_flow`, the
    motion critic's estimator) the same way for every model, against the exact flow:
    `evaluation.flow_metrics.flow_errors` EPE, >1px, >3px, Fl-all (report Table 2). Also the
    motion branch's own predicted flow (`decode_with_flow`) against the exact flow, the decoded
    clip's PSNR against the clip, and two references: Farneback on the clean clip (the
    estimator's floor) and a zero flow.
Logged by the structure arm, summarised per seed: `sft/weight_std`, `sft/weight_signal_corr`,
`sft/clipped_fraction`, `sft/signal_mean` (mean over steps).

Statistics: seeds are the independent units; per arm the mean over seeds with a 95 % Student-t
interval (`evaluation.vbench.summarize`), and per comparison the paired difference (same seed)
with its 95 % t-interval and the number of seeds on which the method was better. Written to
`<out>/results.md` and `<out>/results.json`; curves to `--plot`.

Limits: 3 seeds separate only large effects (read the per-seed values); (a) generates 9-frame
32x32 clips whose camera prompts the base model never saw, so the metric measures learning a new
skill as much as its stability; Farneback on 32x32 frames reads ~0.5 px EPE on the clean clips
themselves (the floor row), so smaller differences are below what it resolves.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
BASE_MODEL = ROOT / "assets" / "toy_base"
CAMERA_KINDS = ("pan", "orbit")
PHYSICS_KINDS = ("object", "pan", "orbit", "order", "composition", "fluid")  # configs/toy.yaml sft.data.kinds
FLOW_KEYS = ("epe", "px1", "px3", "f1_all")

# Written out so an edit of configs/toy.yaml cannot move this benchmark (values as toy.yaml's today).
COMMON = {
    "clip": {"num_frames": 9, "height": 32, "width": 32},
    "world": {"kinds": ["object"]},
    "policy": {"preset": "tiny", "model_path": str(BASE_MODEL), "trainable": "full", "torch_threads": 1},
    "sampling": {"num_steps": 10, "shift": 3.0, "noise_level": 0.7},
    "pool": {"num_bundles": 1, "placement": "colocated"},
    "sft": {"batch_size": 8, "learning_rate": 1.0e-4, "max_grad_norm": 1.0, "keep_checkpoints": 1000},
}
BRANCH = {"hidden_channels": 16, "flow_scale_px": 4.0}  # toy.yaml's policy.motion_branch


@dataclass(frozen=True)
class Arm:
    name: str
    label: str
    overrides: dict


STRUCTURE_DATA = {"data": {"kinds": ["pan", "orbit", "object"]}, "physics": {"enabled": False}}
PHYSICS_POLICY = {"trainable": "decoder", "motion_branch": BRANCH}
ABLATIONS: dict[str, tuple[Arm, ...]] = {
    "a": (  # the first arm is the baseline
        Arm("unweighted", "unweighted SFT", {"sft": {**STRUCTURE_DATA, "structure": {"enabled": False}}}),
        Arm("structure", "structure-aware SFT", {"sft": {**STRUCTURE_DATA, "structure": {"enabled": True, "w_min": 0.5, "w_max": 2.0}}}),
    ),
    "b": (
        Arm("physics", "physics-aware SFT (decoder + motion branch)", {
            "policy": PHYSICS_POLICY,
            "sft": {"data": {"kinds": list(PHYSICS_KINDS)}, "structure": {"enabled": False},
                    "physics": {"enabled": True, "motion_weight": 1.0, "reconstruction_weight": 1.0}}}),
        Arm("decoder_only", "control: same decoder training, motion loss off", {
            "policy": PHYSICS_POLICY,
            "sft": {"data": {"kinds": list(PHYSICS_KINDS)}, "structure": {"enabled": False},
                    "physics": {"enabled": True, "motion_weight": 0.0, "reconstruction_weight": 1.0}}}),
    ),
}


@dataclass(frozen=True)
class Budget:
    seeds: tuple[int, ...]
    steps: int
    eval_every: int
    draws: int  # (a): noise draws per held-out prompt and seed
    camera_prompts: int | None  # (a): None = every held-out camera prompt
    fluid_clips: int  # (b): held-out fluid clips per seed
    arms: dict[str, tuple[str, ...]]

    @property
    def eval_steps(self) -> list[int]:
        return [0, *range(self.eval_every, self.steps, self.eval_every), self.steps]


def arm_config(ablation: str, arm: Arm, seed: int, budget: Budget, run_dir: Path):
    from cluster.config import parse_config

    sft = {**COMMON["sft"], "steps": budget.steps, "checkpoint_every": budget.eval_every}
    return parse_config({**COMMON, "run_dir": str(run_dir), "seed": seed, "sft": sft}, arm.overrides)


def run_arm(config, resume: bool) -> list[dict]:
    """Train one arm (or, with `resume`, read back a finished run of the same config)."""
    from cluster.runtime import run_stage
    from cluster.sft import SFTDriver

    done = Path(config.run_dir) / "bench_run.json"
    wanted = {**config.model_dump(mode="json"), "run_dir": None}
    if resume and done.exists():
        stored = json.loads(done.read_text())
        if stored.get("config") == wanted:
            return stored["records"]
    records = run_stage(SFTDriver(config))
    done.write_text(json.dumps({"config": wanted, "records": records}))
    return records


# ----------------------------------------------------------------------------------------------
# Evaluation


class PolicyAtStep:
    """One policy in memory whose weights are set to the base or to a run's checkpoint in turn."""

    def __init__(self, policy_config):
        from policy.wan import load_policy

        self.policy, _ = load_policy(policy_config.model_copy(update={"init_from": None}))
        self.policy.requires_grad_(False).eval()
        self.base = {k: v.clone() for k, v in self.policy.state_dict().items()}

    def at(self, run_dir: Path | None, step: int):
        from policy.wan import load_stage_weights

        self.policy.load_state_dict(self.base)
        if run_dir is not None and step > 0:
            load_stage_weights(self.policy, str(Path(run_dir) / "checkpoints" / f"step_{step:08d}"))
        return self.policy


def camera_prompts(config, limit: int | None) -> list[str]:
    """Every distinct held-out camera prompt (pan, orbit), in a fixed order."""
    from cluster.prompts import load_prompts

    camera = config.model_copy(update={"world": config.world.model_copy(update={"kinds": CAMERA_KINDS})})
    prompts = list(dict.fromkeys(load_prompts(camera, 256, seed=0, split="held_out")))
    return prompts[:limit] if limit else prompts


@torch.no_grad()
def warp_errors(policy, prompts: list[str], seeds: list[int], config) -> torch.Tensor:
    """[draws, prompts] background warp error of ODE samples, as `cluster.evaluate.target_metrics`."""
    from algorithms.sft import background_warp_error, estimate_global_shift
    from cluster.evaluate import sample_videos

    rows = []
    for seed in seeds:
        videos = sample_videos(policy, prompts, seed, config).float() / 255
        rows.append(background_warp_error(videos, estimate_global_shift(videos)))
    return torch.stack(rows)


def fluid_clips(config, count: int, seed: int):
    from toyworld.world import ToyWorld

    return ToyWorld(*config.clip.shape, kinds=("fluid",), split="held_out").sample(count, seed=10_000 + seed)


def farneback(videos: torch.Tensor) -> torch.Tensor:
    from evaluation.vbench import farneback_video_flow

    return torch.from_numpy(np.stack([farneback_video_flow(video) for video in videos.float()]))


def psnr(decoded: torch.Tensor, clean: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / (decoded.float() - clean.float()).pow(2).mean().clamp_min(1e-12)))


@torch.no_grad()
def fluid_metrics(policy, latents: torch.Tensor, clean: torch.Tensor, true_flow: torch.Tensor) -> dict[str, float]:
    """Farneback on the decoded clips and the motion branch's own flow, against the exact flow."""
    from evaluation.flow_metrics import flow_errors
    from policy.motion_branch import decode_with_flow

    decoded = decode_with_flow(policy, latents)
    estimated = flow_errors(farneback(decoded.video), true_flow)
    branch = flow_errors(decoded.flow, true_flow)
    return {**estimated, **{f"branch_{k}": v for k, v in branch.items()}, "psnr": psnr(decoded.video, clean)}


def fluid_references(clean: torch.Tensor, true_flow: torch.Tensor) -> dict[str, float]:
    from evaluation.flow_metrics import flow_errors

    floor = flow_errors(farneback(clean), true_flow)
    zero = flow_errors(torch.zeros_like(true_flow), true_flow)
    return {**{f"clean_{k}": v for k, v in floor.items()}, **{f"zero_{k}": v for k, v in zero.items()}}


def evaluate_a(seed: int, runs: dict[str, Path], budget: Budget, config, policies: dict) -> dict:
    """{"steps", "prompt_kinds", "arms": {arm: {step: [draws][prompts]}}} for ablation (a)."""
    from toyworld.prompts import parse

    prompts = camera_prompts(config, budget.camera_prompts)
    draws = [1000 * seed + d for d in range(budget.draws)]
    holder = policies.setdefault("a", PolicyAtStep(config.policy))
    base = warp_errors(holder.at(None, 0), prompts, draws, config)
    arms = {}
    for arm, run_dir in runs.items():
        arms[arm] = {"0": base.tolist()}
        for step in budget.eval_steps[1:]:
            arms[arm][str(step)] = warp_errors(holder.at(run_dir, step), prompts, draws, config).tolist()
    return {"prompts": prompts, "kinds": [parse(p).kind for p in prompts], "arms": arms}


def evaluate_b(seed: int, runs: dict[str, Path], budget: Budget, config, policies: dict) -> dict:
    """{"references", "arms": {arm: {step: metrics}}} for ablation (b), on this seed's fluid clips."""
    clips = fluid_clips(config, budget.fluid_clips, seed)
    clean = torch.stack([clip.video for clip in clips])
    true_flow = torch.stack([clip.flow for clip in clips])
    holder = policies.setdefault("b", PolicyAtStep(config.policy))
    with torch.no_grad():  # the encoder is frozen in every arm: one encoding serves all decoders
        latents = holder.at(None, 0).encode_video(clean)
    base = fluid_metrics(holder.at(None, 0), latents, clean, true_flow)
    arms = {}
    for arm, run_dir in runs.items():
        arms[arm] = {"0": base}
        for step in budget.eval_steps[1:]:
            arms[arm][str(step)] = fluid_metrics(holder.at(run_dir, step), latents, clean, true_flow)
    return {"references": fluid_references(clean, true_flow), "arms": arms}


# ----------------------------------------------------------------------------------------------
# Statistics and the report (shared with bench/dpo_toy.py)


def interval(values: list[float], digits: int = 3, percent: bool = False) -> str:
    """'mean [low, high]' over seeds (95 % t-interval; no interval from one seed)."""
    from evaluation.vbench import summarize

    scale, unit = (100.0, "%") if percent else (1.0, "")
    s = summarize(torch.tensor(values, dtype=torch.float64))
    if s["low"] is None:
        return f"{scale * s['mean']:.{digits}f}{unit}"
    return f"{scale * s['mean']:.{digits}f}{unit} [{scale * s['low']:.{digits}f}, {scale * s['high']:.{digits}f}]"


def paired(method: list[float], baseline: list[float], lower_is_better: bool, digits: int = 3,
           percent: bool = False) -> tuple[str, str]:
    """(paired difference method − baseline as 'mean [95 % CI]', 'k/n' seeds on which the method is better)."""
    diffs = [m - b for m, b in zip(method, baseline)]
    better = sum((d < 0) if lower_is_better else (d > 0) for d in diffs)
    return interval(diffs, digits, percent), f"{better}/{len(diffs)}"


def per_seed(values: list[float], digits: int = 3, percent: bool = False) -> str:
    scale = 100.0 if percent else 1.0
    return ", ".join(f"{scale * v:.{digits}f}" for v in values)


def camera_means(result: dict, arm: str, step: int, kind: str | None) -> float:
    """Mean warp error over draws and prompts of `kind` (None = every camera prompt)."""
    values = torch.tensor(result["arms"][arm][str(step)])
    columns = [i for i, k in enumerate(result["kinds"]) if kind is None or k == kind]
    return float(values[:, columns].nanmean())


def weight_summary(records: list[dict]) -> dict[str, float]:
    keys = ("sft/weight_std", "sft/weight_signal_corr", "sft/clipped_fraction", "sft/signal_mean")
    return {key: float(np.nanmean([r[key] for r in records if key in r])) for key in keys if any(key in r for r in records)}


def report(results: dict, budget: Budget, command: str, seconds: float) -> list[str]:
    seeds = list(budget.seeds)
    lines = [f"# Stage I on the toy world: structure-aware and physics-aware SFT ({len(seeds)} seeds)", "",
             f"`{command}` — seeds {seeds}, {budget.steps} SFT steps per arm and seed (batch 8, lr 1e-4), "
             f"run time {seconds / 60:.1f} min. Cells: mean over seeds [95 % t-interval]; paired = method − "
             f"baseline on the same seed.", ""]
    final = budget.steps
    if "a" in results:
        per = results["a"]
        arms = budget.arms["a"]
        base_arm, method = arms[0], arms[-1]
        n_prompts = len(per[seeds[0]]["prompts"])
        lines += ["## (a) Structure-aware vs unweighted SFT: background warp error of generated clips", "",
                  f"Held-out camera prompts: {n_prompts} ({sum(k == 'pan' for k in per[seeds[0]]['kinds'])} pans, "
                  f"{sum(k == 'orbit' for k in per[seeds[0]]['kinds'])} orbits) x {budget.draws} noise draws per seed; "
                  "`background_warp_error(v, estimate_global_shift(v))`, px, lower is better. Training data: pan, "
                  "orbit, object.", "",
                  f"| prompts | base | {base_arm} | {method} | {method} − {base_arm} (paired) | seeds better | "
                  f"per seed: {base_arm} / {method} |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for kind, label in ((None, "camera (pan + orbit)"), ("pan", "pans"), ("orbit", "orbits")):
            base = [camera_means(per[s], base_arm, 0, kind) for s in seeds]
            a = [camera_means(per[s], base_arm, final, kind) for s in seeds]
            b = [camera_means(per[s], method, final, kind) for s in seeds]
            diff, better = paired(b, a, lower_is_better=True)
            lines.append(f"| {label} | {interval(base)} | {interval(a)} | {interval(b)} | {diff} | {better} | "
                         f"{per_seed(a)} / {per_seed(b)} |")
        weights = {s: results["a_weights"][s] for s in seeds}
        keys = list(next(iter(weights.values())))
        if keys:
            lines += ["", f"Structure weights logged by the {method} arm (mean over its {budget.steps} steps):", "",
                      "| seed | " + " | ".join(k.removeprefix("sft/") for k in keys) + " |",
                      "| --- | " + " | ".join("---" for _ in keys) + " |"]
            lines += [f"| {s} | " + " | ".join(f"{weights[s][k]:.3f}" for k in keys) + " |" for s in seeds]
        lines.append("")
    if "b" in results:
        per = results["b"]
        arms = budget.arms["b"]
        lines += ["## (b) Physics-aware SFT vs the base: flow on held-out simulated fluid clips", "",
                  f"{budget.fluid_clips} held-out fluid clips per seed (other clips per seed), encoded by the frozen VAE "
                  "encoder and decoded by each model's decoder; Farneback flow of the decoded clip against the exact "
                  "flow (`flow_errors`, pooled over pixels, frames and clips); lower is better except PSNR.", "",
                  "| model / flow | EPE (px) | >1px | >3px | Fl-all | decoded PSNR (dB) |",
                  "| --- | --- | --- | --- | --- | --- |"]

        def row(label, getter, with_psnr=True):
            cells = [interval([getter(s, k) for s in seeds], 3) if k == "epe" else interval([getter(s, k) for s in seeds], 1, percent=True)
                     for k in FLOW_KEYS]
            psnr_cell = interval([getter(s, "psnr") for s in seeds], 2) if with_psnr else "—"
            return f"| {label} | " + " | ".join(cells) + f" | {psnr_cell} |"

        lines.append(row("base decoder, Farneback", lambda s, k: per[s]["arms"][arms[0]]["0"][k]))
        for arm in arms:
            lines.append(row(f"{arm} decoder, Farneback", lambda s, k, arm=arm: per[s]["arms"][arm][str(final)][k]))
        for arm in arms:
            lines.append(row(f"{arm} motion branch's own flow",
                             lambda s, k, arm=arm: per[s]["arms"][arm][str(final)][k if k == "psnr" else f"branch_{k}"], False))
        lines.append(row("clean clip, Farneback (estimator floor)", lambda s, k: per[s]["references"][f"clean_{k}"], False))
        lines.append(row("zero flow", lambda s, k: per[s]["references"][f"zero_{k}"], False))
        lines += ["", "Paired differences (same seed, same clips):", "",
                  "| comparison | metric | difference [95 % CI] | seeds better | per seed |", "| --- | --- | --- | --- | --- |"]
        comparisons = [(arm, "base", lambda s, k, arm=arm: per[s]["arms"][arm][str(final)][k],
                        lambda s, k: per[s]["arms"][arms[0]]["0"][k]) for arm in arms]
        if len(arms) > 1:
            comparisons.append((arms[0], arms[1], lambda s, k: per[s]["arms"][arms[0]][str(final)][k],
                                lambda s, k: per[s]["arms"][arms[1]][str(final)][k]))
        for name, baseline, method_of, baseline_of in comparisons:
            for key in (*FLOW_KEYS, "psnr"):
                m = [method_of(s, key) for s in seeds]
                b = [baseline_of(s, key) for s in seeds]
                percent = key not in ("epe", "psnr")
                digits = 1 if percent else 2 if key == "psnr" else 3
                diff, better = paired(m, b, lower_is_better=key != "psnr", digits=digits, percent=percent)
                scale, unit = (100, " pp") if percent else (1, "")
                lines.append(f"| {name} − {baseline} | {key}{unit} | {diff} | {better} | "
                             + ", ".join(f"{scale * (x - y):+.{digits}f}" for x, y in zip(m, b)) + " |")
        lines.append("")
    return lines


# ----------------------------------------------------------------------------------------------
# Curves


def plot(results: dict, budget: Budget, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = list(budget.seeds)
    steps = budget.eval_steps
    panels = []
    if "a" in results:
        panels += ["warp", "fm_loss", "weights"]
    if "b" in results:
        panels += ["epe", "f1", "branch"]
    cols = 3
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.0 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    colours = {"unweighted": "tab:blue", "structure": "tab:red", "physics": "tab:red", "decoder_only": "tab:blue"}

    def band(ax, x, values, label, colour, style="-"):
        values = np.asarray(values, dtype=float)  # [seeds, x]
        mean = values.mean(0)
        ax.plot(x, mean, style, color=colour, label=label, marker="o" if len(x) < 12 else None, ms=3)
        if values.shape[0] > 1:
            std = values.std(0)
            ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.15)

    for ax, panel in zip(axes.flat, panels):
        if panel == "warp":
            for arm in budget.arms["a"]:
                band(ax, steps, [[camera_means(results["a"][s], arm, k, None) for k in steps] for s in seeds], arm, colours.get(arm))
            ax.set(title="(a) held-out camera prompts: warp error (px)", xlabel="SFT step")
        elif panel == "fm_loss":
            for arm in budget.arms["a"]:
                recs = [results["a_records"][arm][s] for s in seeds]
                band(ax, [r["step"] for r in recs[0]], [[r["sft/flow_matching"] for r in rr] for rr in recs], arm, colours.get(arm))
            ax.set(title="(a) training flow-matching loss (weighted)", xlabel="SFT step", yscale="log")
        elif panel == "weights":
            arm = budget.arms["a"][-1]
            recs = [results["a_records"][arm][s] for s in seeds]
            x = [r["step"] for r in recs[0]]
            for key, colour in (("sft/weight_std", "tab:red"), ("sft/weight_signal_corr", "tab:purple"),
                                ("sft/clipped_fraction", "tab:gray")):
                band(ax, x, [[r.get(key, math.nan) for r in rr] for rr in recs], key.removeprefix("sft/"), colour)
            ax.set(title=f"(a) {arm} arm: structure weights per batch", xlabel="SFT step")
        elif panel in ("epe", "f1", "branch"):
            key = {"epe": "epe", "f1": "f1_all", "branch": "branch_epe"}[panel]
            for arm in budget.arms["b"]:
                band(ax, steps, [[results["b"][s]["arms"][arm][str(k)][key] for k in steps] for s in seeds], arm, colours.get(arm))
            if panel != "branch":
                floor = [results["b"][s]["references"][f"clean_{key}"] for s in seeds]
                ax.axhline(float(np.mean(floor)), color="k", ls=":", lw=1, label="Farneback on clean clips")
            else:  # a branch that predicts no motion at all scores this
                zero = [results["b"][s]["references"]["zero_epe"] for s in seeds]
                ax.axhline(float(np.mean(zero)), color="k", ls="--", lw=1, label="zero flow")
            ax.set(title={"epe": "(b) fluid: Farneback EPE of decoded clips (px)",
                          "f1": "(b) fluid: Fl-all of decoded clips",
                          "branch": "(b) fluid: motion branch's own EPE (px)"}[panel], xlabel="SFT step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Stage I ablations on the toy world (mean ± std over {len(seeds)} seed(s); step 0 = base)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Main


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="seeds per arm (0..n-1)")
    parser.add_argument("--steps", type=int, default=80, help="SFT steps per run")
    parser.add_argument("--draws", type=int, default=2, help="(a): noise draws per held-out prompt and seed")
    parser.add_argument("--fluid-clips", type=int, default=24, help="(b): held-out fluid clips per seed")
    parser.add_argument("--only", default="a,b", help="comma-separated ablations to run (a, b)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run (tests): 1 seed, 2 steps, 4 prompts, 4 clips, no control arm, under <out>/quick")
    parser.add_argument("--out", default=str(ROOT / "runs" / "show" / "sft_ablation"))
    parser.add_argument("--plot", default=None, help="PNG of the curves (default docs/sft_ablation.png; --quick: <out>/quick/)")
    parser.add_argument("--resume", action="store_true", help="reuse finished runs of the same config")
    args = parser.parse_args(argv)
    only = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in only if k not in ABLATIONS]
    if unknown:
        parser.error(f"--only: unknown ablation(s) {unknown}; accepted: {sorted(ABLATIONS)}")
    out = Path(args.out)
    if args.quick:
        out = out / "quick"
        budget = Budget(seeds=(0,), steps=2, eval_every=2, draws=1, camera_prompts=4, fluid_clips=4,
                        arms={"a": ("unweighted", "structure"), "b": ("physics",)})
    else:
        budget = Budget(seeds=tuple(range(args.seeds)), steps=args.steps, eval_every=max(1, args.steps // 4),
                        draws=args.draws, camera_prompts=None, fluid_clips=args.fluid_clips,
                        arms={key: tuple(arm.name for arm in arms) for key, arms in ABLATIONS.items()})
    plot_path = Path(args.plot) if args.plot else (out / "sft_ablation.png" if args.quick else ROOT / "docs" / "sft_ablation.png")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    log = logging.getLogger("bench.sft_ablation")
    torch.set_num_threads(1)
    started = time.time()
    results: dict = {}
    policies: dict = {}
    for key in only:
        arms = [arm for arm in ABLATIONS[key] if arm.name in budget.arms[key]]
        results[key], records = {}, {arm.name: {} for arm in arms}
        for seed in budget.seeds:
            runs = {}
            for arm in arms:
                config = arm_config(key, arm, seed, budget, out / key / arm.name / f"seed{seed}")
                log.info("(%s) %s seed %d: %d SFT steps", key, arm.name, seed, budget.steps)
                records[arm.name][seed] = run_arm(config, args.resume)
                runs[arm.name] = Path(config.run_dir)
            evaluate = evaluate_a if key == "a" else evaluate_b
            results[key][seed] = evaluate(seed, runs, budget, config, policies)  # steps keyed as strings, as in JSON
        if key == "a":
            results["a_records"] = records
            method = arms[-1].name
            results["a_weights"] = {seed: weight_summary(records[method][seed]) for seed in budget.seeds}
    seconds = time.time() - started
    command = "python -m bench.sft_ablation " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    lines = report(results, budget, command.strip(), seconds)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"budget": {"seeds": list(budget.seeds), "steps": budget.steps,
                                                             "eval_steps": budget.eval_steps, "arms": budget.arms},
                                                  "seconds": seconds, **{k: v for k, v in results.items() if k != "a_records"}},
                                                 default=str))
    plot(results, budget, plot_path)
    print("\n".join(lines))
    print(f"results: {out / 'results.md'}; curves: {plot_path}")
    return results


if __name__ == "__main__":
    main()
