"""Does toy GRPO hold its gains? Seeds × steps of the real driver with a fixed-seed eval (issue 11).

    python -m bench.grpo_hold [--config configs/toy.yaml] [--seeds 3] [--steps 100] [--set grpo.x=y ...]
                              [--out runs/grpo_hold] [--plot docs/grpo_hold.png] [--resume]

Every seed is a real run of `cluster.grpo.GRPODriver` (one local Ray cluster for all of them),
with the config's fixed-seed evaluation (`grpo.eval_every`: the whole prompt pool, the same noise
every time, so a change comes from the weights alone). Reported per seed: the largest relative
drop of that eval below its running best, max_k (best_k − eval_k) / best_k with best_k the best
eval at steps ≤ k (step 0 included), the peak and the final eval; in `<out>/results.md`, with
the curves in `<plot>` and every run's `metrics.jsonl` under `<out>/seed<k>/`.

The driver's eval draws one group per prompt (32 videos on the toy config), and its value
moves by about 8 % of itself from the noise draw alone (within-group reward sd ≈ 0.075 over
√32 videos, on a mean of ≈ 0.15-0.18); so the bench adds a larger fixed-seed eval at the same
steps, `eval_large`: `--eval-videos` per prompt (32: 128 videos, ≈ 4 %), and reports the
criterion on both.

The driver here is `DiagnosticGRPODriver`: the driver unchanged, plus what the diagnosis of the
post-peak decline needed, logged beside the driver's own keys (it only reads, never steers):
- `eval_large`: the larger fixed-seed eval above (its own noise seed, `--eval-videos` per prompt);
- `eval/<judge>`, `eval_group_std`: the fixed-seed eval per toy judge and its within-group spread;
- `diversity/train`, `diversity/eval`: mean over groups of the per-pixel std across a group's
  videos (0 = every video of a prompt identical: the policy ignores its noise);
- `weights/drift` = ‖θ − θ₀‖ / ‖θ₀‖, `weights/step` = ‖θ_t − θ_{t−1}‖ / ‖θ₀‖ and
  `weights/net_over_path` = ‖θ_t − θ_{t−W}‖ / Σ_{s=t−W+1..t} ‖θ_s − θ_{s−1}‖ (W = 5): near 1 when
  successive updates agree, ≈ 1/√W when they are a random walk;
- `reward_group_std_min`: the least spread group of the step (the one eq. 1 amplifies most).

`--shuffle-rewards` permutes each group's rewards at random before the advantages (a control: the
update then follows pure noise with the same advantage statistics).

Limits: the eval covers the training prompt pool (4 prompts on the toy config) with one group of
`group_size` videos per prompt, so it measures fitting those prompts; diagnostics pull the step's
videos (≤ 1 MB) and weights (0.3M parameters) to the driver, fine for the toy model only.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
WINDOW = 5  # steps over which `weights/net_over_path` compares net and path length
JUDGES = ("color", "shape", "motion", "smoothness", "count")


# ----------------------------------------------------------------------------------------------
# Metrics on one run's records (per-step dicts of metrics.jsonl)


def eval_series(records: list[dict], key: str = "eval_reward") -> list[tuple[int, float]]:
    """(step, value) at the evaluation steps (those with the driver's `eval_reward`)."""
    return [(int(r["step"]), float(r[key])) for r in records if r.get("eval_reward") is not None and r.get(key) is not None]


def max_drop_below_best(values: list[float]) -> float:
    """max_k (best_k − v_k) / best_k over the series, best_k = max(v_0..v_k): 0 for a series
    that never falls below its running best."""
    best, drop = -math.inf, 0.0
    for value in values:
        best = max(best, value)
        if best > 0:
            drop = max(drop, (best - value) / best)
    return drop


def summary(records: list[dict], key: str = "eval_reward") -> dict[str, float]:
    evals = eval_series(records, key)
    values = [v for _, v in evals]
    steps = [s for s, _ in evals]
    peak = max(range(len(values)), key=values.__getitem__)
    return {
        "eval_start": values[0], "eval_peak": values[peak], "peak_step": float(steps[peak]), "eval_final": values[-1],
        "max_drop": max_drop_below_best(values),
    }


# ----------------------------------------------------------------------------------------------
# The instrumented driver


def group_pixel_std(videos: torch.Tensor, group_size: int) -> float:
    """uint8 videos [P·G, T, H, W, 3] → mean over groups and pixels of the std across a group."""
    grouped = videos.float().div(255).view(-1, group_size, *videos.shape[1:])
    return grouped.std(dim=1, correction=0).mean().item()


def flat_weights(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([state[key].detach().flatten().double() for key in sorted(state)])


def make_driver(config, shuffle_rewards: bool = False, eval_videos: int = 0):
    """A `GRPODriver` that logs the diagnostics of the module docstring (imports Ray lazily)."""
    import ray

    from cluster.grpo import GRPODriver
    from cluster.pool import PhaseTimeline
    from reward_services.config import component_rewards

    class DiagnosticGRPODriver(GRPODriver):
        def setup(self) -> None:
            self.diagnostics: dict[str, float] = {}
            self.weights_history: list[torch.Tensor] = []
            self.diagnosed_version: int | None = None
            self.in_eval = False
            self.shuffles = 0
            super().setup()
            write = self.metrics.write

            def write_with_evals(record: dict) -> None:  # the step-0 eval is written outside record_step
                extra = {k: v for k, v in self.diagnostics.items() if k.startswith("eval")} if record.get("step") == 0 else {}
                write({**record, **extra})

            self.metrics.write = write_with_evals

        def sync_weights(self, role: str = "rollout", averaged: bool = False) -> int:
            version = super().sync_weights(role, averaged)
            if version == self.diagnosed_version or averaged:  # new online weights only, not a re-sync after an eval
                return version
            self.diagnosed_version = version
            weights = flat_weights(ray.get(self.learners.weights()[0]))
            history = self.weights_history
            history.append(weights)
            scale = history[0].norm().item()
            self.diagnostics["weights/drift"] = (weights - history[0]).norm().item() / scale
            if len(history) > 1:
                self.diagnostics["weights/step"] = (weights - history[-2]).norm().item() / scale
            if len(history) > WINDOW:
                path = sum((history[-i] - history[-i - 1]).norm().item() for i in range(1, WINDOW + 1))
                self.diagnostics["weights/net_over_path"] = (weights - history[-WINDOW - 1]).norm().item() / max(path, 1e-30)
            del history[1:-WINDOW - 1]  # keep θ₀ and the window
            return version

        def evaluate(self, timeline, video_refs, shards):
            rewards, scores, num_gated = super().evaluate(timeline, video_refs, shards)
            group_size = self.config.grpo.group_size
            videos = torch.cat(ray.get(video_refs))
            where = "eval" if self.in_eval else "train"
            self.diagnostics[f"diversity/{where}"] = group_pixel_std(videos, group_size)
            if self.in_eval:
                for judge in JUDGES:
                    key = f"toy_judges.{judge}"
                    if key in scores:
                        self.diagnostics[f"eval/{judge}"] = scores[key].nanmean().item()
                total = sum(rewards.values()) / len(rewards)
                self.diagnostics["eval_group_std"] = total.std(dim=1, correction=0).mean().item()
            elif shuffle_rewards:
                self.shuffles += 1
                generator = torch.Generator().manual_seed(self.step_seed(self.shuffles, "shuffle"))
                num_groups = next(iter(rewards.values())).shape[0]
                order = torch.stack([torch.randperm(group_size, generator=generator) for _ in range(num_groups)])
                rewards = {name: value.gather(1, order) for name, value in rewards.items()}
            if not self.in_eval:
                total = sum(rewards.values()) / len(rewards)
                self.diagnostics["reward_group_std_min"] = total.std(dim=1, correction=0).min().item()
            return rewards, scores, num_gated

        def evaluate_fixed(self) -> float:
            self.in_eval = True
            try:
                value = super().evaluate_fixed()
            finally:
                self.in_eval = False
            if eval_videos:  # the larger fixed-seed eval: its own noise seed, eval_videos per prompt
                timeline = PhaseTimeline(self.pool.all_bundles())
                shards = self.shard(self.prompt_pool)
                with self.averaged_rollouts():
                    video_refs, _ = self.sample(timeline, shards, "eval_large", eval_videos)
                components, _ = component_rewards(self.score(timeline, video_refs, shards, eval_videos), self.config.rewards)
                self.diagnostics["eval_large"] = (sum(components.values()) / len(components)).nanmean().item()
            return value

        def record_step(self, record, timeline):
            record = super().record_step({**record, **self.diagnostics}, timeline)
            for key in [k for k in self.diagnostics if k.startswith(("eval", "diversity/eval"))]:
                del self.diagnostics[key]  # an eval's keys go with its step's record only
            return record

    return DiagnosticGRPODriver(config)


def run_seed(config, shuffle_rewards: bool, resume: bool, eval_videos: int = 0) -> tuple[list[dict], bool]:
    """(records, reused): `bench_run.json` in the run dir holds config + records of a finished
    run; with `resume` one whose config matches (run_dir aside) is read back."""
    done = Path(config.run_dir) / "bench_run.json"
    wanted = {**config.model_dump(mode="json"), "shuffle_rewards": shuffle_rewards, "eval_videos": eval_videos}
    if resume and done.exists():
        stored = json.loads(done.read_text())
        if {**stored["config"], "run_dir": None} == {**wanted, "run_dir": None}:
            return stored["records"], True
    driver = make_driver(config, shuffle_rewards, eval_videos)
    try:
        driver.setup()
        driver.train()
        records = driver.metrics.records()  # the step-0 eval included
    finally:
        driver.shutdown()
    done.write_text(json.dumps({"config": wanted, "records": records}))
    return records, False


# ----------------------------------------------------------------------------------------------
# Report


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (benches run headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(runs: dict[int, list[dict]], path: Path, title: str) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for colour, (seed, records) in zip(colours, runs.items()):
        key = "eval_large" if eval_series(records, "eval_large") else "eval_reward"
        steps, values = zip(*eval_series(records, key))
        best = [max(values[:i + 1]) for i in range(len(values))]
        stats = summary(records, key)
        axes[0].plot(steps, values, "o-", color=colour, ms=3,
                     label=f"seed {seed} ({key}): max drop {100 * stats['max_drop']:.1f}%, final {stats['eval_final']:.3f}")
        axes[0].fill_between(steps, [0.9 * b for b in best], best, color=colour, alpha=0.12, step="post")
        if key == "eval_large":  # the driver's 32-video eval, thin
            small = summary(records)
            axes[0].plot(*zip(*eval_series(records)), ":", color=colour, lw=1,
                         label=f"seed {seed} (eval_reward): max drop {100 * small['max_drop']:.1f}%")
        train = [(r["step"], r["reward_mean"]) for r in records if "reward_mean" in r]
        axes[1].plot(*zip(*train), color=colour, alpha=0.8, lw=1, label=f"seed {seed}")
    axes[0].set_title("fixed-seed eval reward (band: 10% below the running best)", fontsize=9)
    axes[0].set_ylabel("toy-judge reward")
    axes[1].set_title("per-step training reward (4 prompts x 8 videos)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, path, title)


def plot_runs(runs: dict[str, list[dict]], path: Path, keys: tuple[str, ...], title: str) -> None:
    """One panel per record key, one line per labelled run (the diagnosis figures)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 3.8), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes[0], keys):
        for colour, (label, records) in zip(colours, runs.items()):  # one colour per run in every panel
            points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
            if points:
                ax.plot(*zip(*points), "o-" if key == "eval_reward" else "-", color=colour, ms=3, lw=1.2, label=label)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    _save(fig, path, title)


def plot_arms(arms: dict[str, dict[int, list[dict]]], path: Path, title: str) -> None:
    """Arms (label → {seed: records}) side by side: one column per seed; rows: the fixed-seed evals
    (eval_large solid, the driver's eval_reward dotted, the band 10 % below eval_large's running
    best), and the velocity's deviation from the reference."""
    plt = _pyplot()
    seeds = sorted({seed for runs in arms.values() for seed in runs})
    fig, axes = plt.subplots(2, len(seeds), figsize=(5.0 * len(seeds), 6.4), squeeze=False, sharex=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for column, seed in enumerate(seeds):
        top, bottom = axes[0][column], axes[1][column]
        for colour, (label, runs) in zip(colours, arms.items()):
            records = runs.get(seed)
            if not records:
                continue
            key = "eval_large" if eval_series(records, "eval_large") else "eval_reward"
            steps, values = zip(*eval_series(records, key))
            best = [max(values[:i + 1]) for i in range(len(values))]
            drop = max_drop_below_best(list(values))
            top.plot(steps, values, "o-", color=colour, ms=3, label=f"{label}: max drop {100 * drop:.1f}%")
            top.fill_between(steps, [0.9 * b for b in best], best, color=colour, alpha=0.10, step="post")
            if key == "eval_large":
                top.plot(*zip(*eval_series(records)), ":", color=colour, lw=1)
            deviation = [(r["step"], r["update/velocity_deviation"]) for r in records if "update/velocity_deviation" in r]
            if deviation:
                bottom.plot(*zip(*deviation), color=colour, lw=1.2, label=label)
        top.set_title(f"seed {seed}: fixed-seed eval (solid 128 videos, dotted 32)", fontsize=9)
        bottom.set_title("velocity deviation from the reference", fontsize=9)
        bottom.set_xlabel("GRPO step")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
        top.legend(fontsize=7)
    _save(fig, path, title)


def report_lines(runs: dict[int, list[dict]], command: str) -> list[str]:
    lines = [f"`{command}`", "", "| seed | eval | step 0 | peak (step) | final | max drop below running best |",
             "| --- | --- | --- | --- | --- | --- |"]
    worst: dict[str, float] = {}
    for seed, records in runs.items():
        for key in ("eval_reward", "eval_large"):
            if not eval_series(records, key):
                continue
            s = summary(records, key)
            worst[key] = max(worst.get(key, 0.0), s["max_drop"])
            lines.append(f"| {seed} | {key} | {s['eval_start']:.3f} | {s['eval_peak']:.3f} ({s['peak_step']:.0f}) | "
                         f"{s['eval_final']:.3f} | {100 * s['max_drop']:.1f}% |")
    lines += [""] + [f"worst max drop over seeds, {key}: {100 * drop:.1f}% (criterion: ≤ 10%)" for key, drop in worst.items()]
    return lines + [""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "toy.yaml"))
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated run seeds")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--shuffle-rewards", action="store_true", help="control: permute each group's rewards")
    parser.add_argument("--eval-videos", type=int, default=32,
                        help="videos per prompt of the larger fixed-seed eval `eval_large` (0: off)")
    parser.add_argument("--out", default=str(ROOT / "runs" / "grpo_hold"))
    parser.add_argument("--plot", default=None, help="PNG of the curves (default <out>/curves.png)")
    parser.add_argument("--resume", action="store_true", help="reuse finished seeds with the same config")
    parser.add_argument("--figure", nargs="+", metavar="LABEL=RUN_DIR",
                        help="no training: draw --keys of finished runs (their metrics.jsonl) side by side to --plot")
    parser.add_argument("--keys", default="eval_reward,reward_mean,update/velocity_deviation",
                        help="record keys for --figure, comma-separated")
    parser.add_argument("--title", default="", help="--figure's and --compare's title")
    parser.add_argument("--compare", nargs="+", metavar="LABEL=OUT",
                        help="no training: finished multi-seed outputs (their seed<k>/metrics.jsonl) side by side to --plot")
    args = parser.parse_args(argv)
    if args.compare:
        arms = {}
        for item in args.compare:
            label, _, out_dir = item.partition("=")
            arms[label] = {int(path.parent.name.removeprefix("seed")): [json.loads(line) for line in path.read_text().splitlines() if line]
                           for path in sorted(Path(out_dir).glob("seed*/metrics.jsonl"))}
        plot_arms(arms, Path(args.plot or "compare.png"), args.title)
        print(f"wrote {args.plot or 'compare.png'}")
        return
    if args.figure:
        runs = {}
        for item in args.figure:
            label, _, run_dir = item.partition("=")
            runs[label] = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]
        plot_runs(runs, Path(args.plot or "figure.png"), tuple(args.keys.split(",")), args.title)
        print(f"wrote {args.plot or 'figure.png'}")
        return

    from cluster.config import load_config, parse_overrides

    out = Path(args.out)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    overrides = parse_overrides([f"grpo.steps={args.steps}", *args.set])
    configs = {seed: load_config(args.config, {**overrides, "seed": seed, "run_dir": str(out / f"seed{seed}")})
               for seed in seeds}
    base = Path(next(iter(configs.values())).policy.model_path or "")
    if not (base / "base_eval.json").exists():
        raise SystemExit(f"no base model at {base}: run `python -m cluster.jobs.pretrain --config configs/toy.yaml` first")

    import ray

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("teleboost.runtime").setLevel(logging.WARNING)  # checkpoint lines
    out.mkdir(parents=True, exist_ok=True)
    ray.init(address="local", num_cpus=2, resources={"accelerator": 1}, include_dashboard=False, log_to_driver=False)
    started = time.perf_counter()
    runs: dict[int, list[dict]] = {}
    try:
        for seed, config in configs.items():
            t0 = time.perf_counter()
            runs[seed], reused = run_seed(config, args.shuffle_rewards, args.resume, args.eval_videos)
            s = summary(runs[seed], "eval_large" if args.eval_videos else "eval_reward")
            print(f"[{time.perf_counter() - started:6.0f}s] seed {seed}: eval {s['eval_start']:.3f} → peak "
                  f"{s['eval_peak']:.3f} (step {s['peak_step']:.0f}) → final {s['eval_final']:.3f}; max drop "
                  f"{100 * s['max_drop']:.1f}% ({'reused' if reused else f'{time.perf_counter() - t0:.0f}s'})", flush=True)
    finally:
        ray.shutdown()
    command = "python -m bench.grpo_hold " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    lines = report_lines(runs, command)
    (out / "results.md").write_text("\n".join(lines))
    plot_path = Path(args.plot) if args.plot else out / "curves.png"
    plot(runs, plot_path, f"GRPO on the toy world, {args.steps} steps, seeds {', '.join(map(str, seeds))}")
    print("\n".join(lines))
    print(f"wrote {out / 'results.md'}, {plot_path}")


if __name__ == "__main__":
    main()
