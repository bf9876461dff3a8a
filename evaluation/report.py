"""One self-contained HTML page for a pipeline run: training curves, pool timeline, evaluation.

    build_report("runs/pipeline")  ->  runs/pipeline/report/index.html (+ PNGs and GIFs beside it)

Reads the run directory

    <pipeline_dir>/{sft,grpo,dpo}/metrics.jsonl   one JSON object per step ("step" + numbers)
    <pipeline_dir>/{sft,grpo,dpo}/timeline.jsonl  {"step", "intervals": [{"phase", "bundle", "start", "end"}]}
    <pipeline_dir>/eval/eval.json                 `evaluation.results.EvalResults` (+ its GIFs)

and shows: per-stage training curves (GRPO: reward per critic score), the Self-Paced curriculum
phase and the joint-reward weights, a Gantt chart of the pool's phases per bundle for a few steps
and utilisation over steps (report §4), the metric table base → SFT → GRPO → DPO with 95 %
intervals over seeds, GSB stacked bars per aspect (report Figure 8) with Table 1's statistics, and
sample clips of the base and the final stage side by side (same prompts and seeds).

A missing stage or file becomes a short "not run" note; an unreadable JSONL line or an invalid
eval.json becomes a visible warning — the page is built from whatever the run produced. The page
uses inline CSS and relative links only, so the folder can be copied or attached as it is.
"""

from __future__ import annotations

import html
import json
import math
import shutil
from pathlib import Path
from urllib.parse import quote

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from pydantic import ValidationError

from evaluation.gsb import gsb_table
from evaluation.results import EvalResults
from evaluation.vbench import DIMENSIONS

TRAINED_STAGES = ("sft", "grpo", "dpo")
STAGE_NAMES = {"base": "Base", "sft": "SFT", "grpo": "GRPO", "dpo": "DPO"}
# (panel title, keys); a key ending in "/" selects every key with that prefix
CURVE_PANELS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "sft": (("loss", ("loss",)), ("SFT terms", ("sft/",))),
    "grpo": (
        ("reward", ("reward_mean", "eval_reward")),
        ("critic scores", ("score/",)),
        ("reward components", ("reward/",)),
        ("update", ("update/loss", "update/kl")),
    ),
    "dpo": (("loss", ("loss",)), ("implicit accuracy", ("implicit_accuracy",)),
            ("reward margin", ("reward_margin",)), ("β", ("beta",))),
}
GANTT_STEPS = 3  # first, middle and last recorded step
GSB_COLORS = {"good": "#4c9a56", "same": "#b8b8b8", "bad": "#c8524a"}

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
.note { color: #666; font-style: italic; } .warning { color: #a33; }
table { border-collapse: collapse; margin: 1em 0; } td, th { border: 1px solid #ddd; padding: .3em .6em; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; } table.clips img { width: 192px; image-rendering: pixelated; }
"""


class _Page:
    """Collects figures (written as PNGs into `out_dir`) and warnings while sections are built."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.warnings: list[str] = []

    def figure(self, fig: Figure, name: str, alt: str) -> str:
        FigureCanvasAgg(fig)
        fig.tight_layout()
        fig.savefig(self.out_dir / name, dpi=100)
        return f'<img src="{html.escape(name)}" alt="{html.escape(alt)}">'

    def read_jsonl(self, path: Path, run_dir: Path) -> list[dict] | None:
        """Records with a "step", sorted by step; None when the file is missing."""
        if not path.is_file():
            return None
        records = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict) or not _is_number(record.get("step")):
                self.warnings.append(f"{path.relative_to(run_dir)} line {number}: not a JSON object with a step; skipped")
                continue
            records.append(record)
        return sorted(records, key=lambda r: r["step"])


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    points = [(r["step"], r[key]) for r in records if _is_number(r.get(key))]
    return [p[0] for p in points], [p[1] for p in points]


def _matching_keys(records: list[dict], patterns: tuple[str, ...]) -> list[str]:
    """Numeric keys selected by `patterns` (exact names, or prefixes ending in "/"), in first-seen order."""
    seen = dict.fromkeys(k for r in records for k, v in r.items() if _is_number(v))
    return [k for p in patterns for k in seen if (k.startswith(p) if p.endswith("/") else k == p)]


def _plot_lines(ax, records: list[dict], keys: list[str], **style) -> None:
    for key in keys:
        steps, values = _series(records, key)
        ax.plot(steps, values, marker="o" if len(steps) <= 12 else None, markersize=3, label=key, **style)


def _curves_section(page: _Page, stage: str, records: list[dict] | None) -> str:
    name = STAGE_NAMES[stage]
    if records is None:
        return f"<h3>{name}</h3>" + _note(f"{name} not run (no {stage}/metrics.jsonl).")
    panels = [(title, keys) for title, patterns in CURVE_PANELS[stage] if (keys := _matching_keys(records, patterns))]
    if not panels:
        return f"<h3>{name}</h3>" + _note(f"{stage}/metrics.jsonl has no {name} training metrics.")
    columns = min(2, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig = Figure(figsize=(5.5 * columns, 3.2 * rows))
    for index, (title, keys) in enumerate(panels):
        ax = fig.add_subplot(rows, columns, index + 1)
        _plot_lines(ax, records, keys)
        ax.set(title=title, xlabel="step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return f"<h3>{name}</h3>" + page.figure(fig, f"curves_{stage}.png", f"{name} training curves")


def _curriculum_section(page: _Page, records: list[dict] | None) -> str:
    if records is None:
        return _note("GRPO not run.")
    phase = _matching_keys(records, ("curriculum/phase_index",))
    weights = _matching_keys(records, ("reward_weight/",))
    joint = _matching_keys(records, ("joint_c/",))
    if not (phase or weights or joint):
        return _note("No curriculum or joint-reward records in grpo/metrics.jsonl.")
    fig = Figure(figsize=(11, 3.2))
    ax_phase, ax_weights = fig.subplots(1, 2)
    if phase:
        steps, values = _series(records, phase[0])
        ax_phase.step(steps, values, where="post")
        ax_phase.set_yticks(sorted({int(v) for v in values}))
    else:
        ax_phase.text(0.5, 0.5, "Self-Paced curriculum off", ha="center", va="center", transform=ax_phase.transAxes)
    ax_phase.set(title="Self-Paced curriculum phase (report §3.4)", xlabel="step", ylabel="phase index")
    _plot_lines(ax_weights, records, weights)
    _plot_lines(ax_weights, records, joint, linestyle="--")
    ax_weights.set(title="reward weights (solid), min-norm c (dashed; eq. 4)", xlabel="step")
    for ax in (ax_phase, ax_weights):
        ax.grid(alpha=0.3)
    if weights or joint:
        ax_weights.legend(fontsize=7)
    return page.figure(fig, "curriculum.png", "curriculum phase and joint-reward weights")


def _gantt_section(page: _Page, stage: str, timeline: list[dict]) -> str:
    steps = [timeline[i] for i in sorted({0, len(timeline) // 2, len(timeline) - 1})][:GANTT_STEPS]
    intervals = [i for step in steps for i in step.get("intervals", [])]
    if not intervals:
        return _note(f"{stage}/timeline.jsonl has no intervals.")
    phases = list(dict.fromkeys(i["phase"] for i in intervals))
    bundles = sorted({i["bundle"] for i in intervals})
    colors = {phase: f"C{n % 10}" for n, phase in enumerate(phases)}
    fig = Figure(figsize=(11, 0.6 + 0.45 * len(bundles) + 1.2))
    axes = fig.subplots(1, len(steps), squeeze=False)[0]
    for ax, step in zip(axes, steps):
        for interval in step.get("intervals", []):
            ax.barh(bundles.index(interval["bundle"]), interval["end"] - interval["start"], left=interval["start"],
                    color=colors[interval["phase"]], edgecolor="white")
        ax.set_yticks(range(len(bundles)), bundles)
        ax.set(title=f"step {step['step']}", xlabel="seconds from step start")
    axes[-1].legend(handles=[Patch(color=colors[p], label=p) for p in phases], fontsize=8,
                    loc="center left", bbox_to_anchor=(1.02, 0.5))
    return page.figure(fig, f"timeline_{stage}.png", f"{STAGE_NAMES[stage]} pool timeline")


def _pool_section(page: _Page, timelines: dict[str, list[dict] | None], metrics: dict[str, list[dict] | None]) -> str:
    parts = []
    for stage in TRAINED_STAGES:
        name = STAGE_NAMES[stage]
        timeline = timelines[stage]
        parts.append(f"<h3>{name}</h3>")
        parts.append(_note(f"{name} not run (no {stage}/timeline.jsonl).") if timeline is None
                     else _gantt_section(page, stage, timeline))
    with_utilisation = {s: r for s, r in metrics.items() if r and _series(r, "utilisation")[0]}
    parts.append("<h3>Utilisation</h3>")
    if not with_utilisation:
        return "".join(parts) + _note("No stage recorded utilisation.")
    fig = Figure(figsize=(7, 3.2))
    ax = fig.subplots()
    for stage, records in with_utilisation.items():
        ax.plot(*_series(records, "utilisation"), label=STAGE_NAMES[stage])
    ax.set(title="busy accelerator-seconds / (bundles × wall time)", xlabel="step", ylim=(0, 1.05))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return "".join(parts) + page.figure(fig, "utilisation.png", "utilisation over steps")


def _interval(summary) -> str:
    if summary.low is None or summary.high is None:
        return f"{summary.mean:.3f} <small>(1 seed)</small>"
    return f"{summary.mean:.3f} <small>[{summary.low:.3f}, {summary.high:.3f}]</small>"


def _metric_table(results: EvalResults) -> str:
    if not results.metrics:
        return _note("eval.json has no metrics.")
    stages = [s for s in results.stages if s in results.metrics]
    found = dict.fromkeys(m for s in stages for m in results.metrics[s])
    names = [m for m in DIMENSIONS if m in found] + sorted(m for m in found if m not in DIMENSIONS)
    head = "".join(f"<th>{STAGE_NAMES[s]}</th>" for s in stages)
    rows = []
    for name in names:
        cells = "".join(
            f'<td class="num">{_interval(results.metrics[s][name])}</td>' if name in results.metrics[s] else "<td>—</td>"
            for s in stages
        )
        rows.append(f"<tr><th>{html.escape(name)}</th>{cells}</tr>")
    return (f"<p>Mean over {len(results.seeds)} seed(s) with 95 % t-interval; each seed averages "
            f"{len(results.prompts)} prompt(s).</p><table><tr><th>metric</th>{head}</tr>{''.join(rows)}</table>")


def _gsb_section(page: _Page, results: EvalResults) -> str:
    if not results.gsb:
        return _note("eval.json has no GSB comparisons.")
    parts = []
    for key, counts in results.gsb.items():
        first, second = key.split("_vs_")
        title = f"{STAGE_NAMES[first]} vs {STAGE_NAMES[second]}"
        table = gsb_table(counts)
        aspects = list(table)[::-1]  # first aspect on top
        fig = Figure(figsize=(8, 0.6 + 0.5 * len(aspects)))
        ax = fig.subplots()
        left = [0.0] * len(aspects)
        for part, color in GSB_COLORS.items():
            shares = [getattr(table[a].counts, part) / max(table[a].counts.total, 1) for a in aspects]
            ax.barh(aspects, shares, left=left, color=color, label=part.capitalize())
            for y, (start, share) in enumerate(zip(left, shares)):
                if share >= 0.06:
                    ax.text(start + share / 2, y, f"{share:.0%}", ha="center", va="center", fontsize=8)
            left = [a + b for a, b in zip(left, shares)]
        ax.set(xlim=(0, 1), xlabel="share of judgements", title=f"GSB: {title} (report Figure 8)")
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
        rows = "".join(
            f"<tr><th>{a}</th><td class='num'>{s.counts.good}</td><td class='num'>{s.counts.same}</td>"
            f"<td class='num'>{s.counts.bad}</td>"
            f"<td class='num'>{s.win_rate:.2%} <small>[{s.win_rate_interval[0]:.1%}, {s.win_rate_interval[1]:.1%}]</small></td>"
            f"<td class='num'>{s.preference:.2%} <small>[{s.preference_interval[0]:.1%}, {s.preference_interval[1]:.1%}]</small></td>"
            f"<td class='num'>{s.margin:+.2%}</td></tr>"
            for a, s in table.items()
        )
        parts.append(
            f"<h3>{title}</h3>" + page.figure(fig, f"gsb_{key}.png", f"GSB {title}")
            + "<table><tr><th>aspect</th><th>G</th><th>S</th><th>B</th><th>WinRate [95 % Wilson]</th>"
            f"<th>Preference [95 %]</th><th>Margin</th></tr>{rows}</table>"
        )
    return "".join(parts)


def _clips_section(page: _Page, results: EvalResults, eval_dir: Path) -> str:
    stages = [s for s in results.stages if s in results.clips]
    if not stages:
        return _note("eval.json has no clips.")
    shown = [stages[0], stages[-1]] if len(stages) > 1 else stages
    note = "" if len(shown) > 1 else _note(f"Only {STAGE_NAMES[shown[0]]} has clips.")

    def cell(stage: str, index: int) -> str:
        relative = results.clips[stage][index]
        source = eval_dir / relative
        if not source.is_file():
            page.warnings.append(f"eval/{relative}: missing clip")
            return '<td class="warning">missing</td>'
        target = page.out_dir / "eval" / relative  # the page's folder mirrors eval/, so it travels alone
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        return f'<td><img src="eval/{html.escape(quote(relative))}" alt="{STAGE_NAMES[stage]} clip"></td>'

    head = "".join(f"<th>{STAGE_NAMES[s]}</th>" for s in shown)
    rows = []
    for p, prompt in enumerate(results.prompts):
        for s, seed in enumerate(results.seeds):
            index = results.clip_index(p, s)
            rows.append(f"<tr><td>{html.escape(prompt)}</td><td class='num'>{seed}</td>"
                        + "".join(cell(stage, index) for stage in shown) + "</tr>")
    return note + f'<table class="clips"><tr><th>prompt</th><th>seed</th>{head}</tr>{"".join(rows)}</table>'


def _evaluation_sections(page: _Page, eval_dir: Path) -> str:
    path = eval_dir / "eval.json"
    if not path.is_file():
        return "<h2>Evaluation</h2>" + _note("Evaluation not run (no eval/eval.json).")
    try:
        results = EvalResults.load(path)
    except (ValidationError, ValueError) as error:
        page.warnings.append(f"eval/eval.json is invalid, evaluation not shown: {error}")
        return "<h2>Evaluation</h2>" + _note("eval/eval.json is invalid (see warnings).")
    return (
        "<h2>Metrics per stage</h2>" + _metric_table(results)
        + "<h2>GSB comparisons (report §7.1)</h2>" + _gsb_section(page, results)
        + "<h2>Sample clips</h2>" + _clips_section(page, results, eval_dir)
    )


def build_report(pipeline_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write `index.html` (+ PNGs, copied GIFs) for a pipeline run; returns the page's path.

    `out_dir` defaults to `<pipeline_dir>/report`.
    """
    run_dir = Path(pipeline_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    page = _Page(out)
    metrics = {s: page.read_jsonl(run_dir / s / "metrics.jsonl", run_dir) for s in TRAINED_STAGES}
    timelines = {s: page.read_jsonl(run_dir / s / "timeline.jsonl", run_dir) for s in TRAINED_STAGES}
    body = (
        "<h2>Training curves</h2>" + "".join(_curves_section(page, s, metrics[s]) for s in TRAINED_STAGES)
        + "<h2>Curriculum and joint reward (GRPO)</h2>" + _curriculum_section(page, metrics["grpo"])
        + "<h2>Pool timeline</h2>" + _pool_section(page, timelines, metrics)
        + _evaluation_sections(page, run_dir / "eval")
    )
    warnings = "".join(f'<p class="warning">{html.escape(w)}</p>' for w in page.warnings)
    ran = [STAGE_NAMES[s] for s in TRAINED_STAGES if metrics[s] is not None]
    title = f"TeleBoost run: {html.escape(run_dir.resolve().name)}"
    document = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{CSS}</style></head><body><h1>{title}</h1>"
        f"<p>Stages with training records: {' → '.join(ran) or 'none'}.</p>{warnings}{body}</body></html>\n"
    )
    index = out / "index.html"
    index.write_text(document)
    return index
