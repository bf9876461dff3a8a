"""The staged pipeline end to end: pretrain → SFT → GRPO → DPO → eval → report, as Ray jobs.

`python -m cluster.jobs.pipeline --config configs/pipeline.yaml [--out runs/pipeline]` (what `make
demo` runs) starts its own Ray head on loopback — its own ports and temp dir, so it never
touches another Ray instance on the machine, and it stops exactly that head at the end — and
submits every stage to it as a Ray job (the same entry points `ray job submit` runs on a
cluster). Each stage starts from the previous one (`policy.init_from`); the base model is the
pretrain job's cached result (the toy base model ships in `assets/`, so that stage returns at
once on a fresh clone).

While a stage runs, a progress bar follows its steps (read from its `metrics.jsonl`) with an
ETA. A stage that fails stops the pipeline with its error and the path of its log; the next run
skips the stages that finished (a `DONE.json` in each stage's folder) and resumes the one that
failed from its last checkpoint. `<out>/pipeline.json` records each stage's wall time.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cluster.local_head import LocalHead

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("pretrain", "sft", "grpo", "dpo", "eval", "report")
PREVIOUS = {"grpo": "sft", "dpo": "grpo"}
console = Console()


class StageFailed(RuntimeError):
    pass


@dataclass
class Stage:
    name: str
    command: list[str]
    steps: int  # 0: no per-step progress (pretrain, eval, report)
    run_dir: Path


def stage_plan(config_path: Path, out: Path, overrides: list[str], config) -> list[Stage]:
    """The job each stage runs, with the run dir and starting weights that chain the stages."""
    python = [sys.executable, "-m"]
    common = ["--config", str(config_path), *[arg for pair in overrides for arg in ("--set", pair)]]
    plan = [Stage("pretrain", python + ["cluster.jobs.pretrain", *common], 0, out / "pretrain")]
    for name, steps in (("sft", config.sft.steps), ("grpo", config.grpo.steps), ("dpo", config.dpo.steps)):
        chained = ["--set", f"run_dir={out / name}"]
        if name in PREVIOUS:
            chained += ["--set", f"policy.init_from={out / PREVIOUS[name]}"]
        plan.append(Stage(name, python + [f"cluster.jobs.{name}", *common, *chained], steps, out / name))
    plan.append(Stage("eval", python + ["cluster.jobs.eval", *common, "--pipeline-dir", str(out)], 0, out / "eval"))
    plan.append(Stage("report", python + ["cluster.jobs.report", "--pipeline-dir", str(out)], 0, out / "report"))
    return plan


def run_stage(head: LocalHead, stage: Stage, resume: bool, progress: Progress) -> float:
    """Submit the stage's job, follow it to the end; returns its wall seconds or raises StageFailed."""
    stage.run_dir.mkdir(parents=True, exist_ok=True)
    command = stage.command + (["--resume"] if resume and stage.steps else [])
    entrypoint = f"cd {shlex.quote(str(ROOT))} && exec {shlex.join(command)}"
    started = time.monotonic()
    job = head.submit(entrypoint)
    task = progress.add_task(stage.name, total=stage.steps or None)
    from ray.job_submission import JobStatus

    while True:
        status = head.client.get_job_status(job)
        if stage.steps:
            progress.update(task, completed=_steps_done(stage.run_dir / "metrics.jsonl"))
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            break
        time.sleep(1.0)
    log_path = stage.run_dir / "job.log"
    log_path.write_text(head.client.get_job_logs(job))
    seconds = time.monotonic() - started
    progress.update(task, completed=stage.steps or 1, total=stage.steps or 1)
    if status != JobStatus.SUCCEEDED:
        message = head.client.get_job_info(job).message or ""
        last = [line for line in log_path.read_text().splitlines() if line.strip()][-3:]
        raise StageFailed(f"stage {stage.name} failed ({status}): {message.strip()}\n  "
                          + "\n  ".join(last) + f"\n  full log: {log_path}")
    (stage.run_dir / "DONE.json").write_text(json.dumps({"seconds": seconds, "job": job}))
    return seconds


def _steps_done(metrics: Path) -> int:
    if not metrics.exists():
        return 0
    steps = [json.loads(line).get("step", 0) for line in metrics.read_text().splitlines() if line.strip()]
    return max([s for s in steps if isinstance(s, int)], default=0)


def run_pipeline(config_path: str, out: str, overrides: list[str], stages: list[str] | None = None) -> dict[str, float]:
    """Run the stages not yet done; returns {stage: seconds} of this run. Raises StageFailed."""
    from cluster.config import load_config, parse_overrides

    config = load_config(config_path, parse_overrides(overrides))  # a bad config fails before Ray starts
    out_dir, wanted = Path(out).resolve(), stages or list(STAGES)
    unknown = sorted(set(wanted) - set(STAGES))
    if unknown:
        raise ValueError(f"--stages: unknown {unknown}; stages are {list(STAGES)}")
    plan = [s for s in stage_plan(Path(config_path).resolve(), out_dir, overrides, config) if s.name in wanted]
    todo = [s for s in plan if not (s.run_dir / "DONE.json").exists()]
    for stage in plan:
        if stage not in todo:
            console.print(f"[dim]{stage.name}: done earlier ({stage.run_dir}), skipped[/dim]")
    timings: dict[str, float] = {}
    summary_path = out_dir / "pipeline.json"
    if todo:
        with LocalHead(config.pool.num_bundles, max(2, os.cpu_count() or 2)) as head, Progress(
            TextColumn("{task.description:>9}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), console=console,
        ) as progress:
            console.print(f"Ray head {head.address} (temp dir {head.temp_dir}); stages: {', '.join(s.name for s in todo)}")
            for stage in todo:
                resume = (stage.run_dir / "checkpoints").is_dir()
                timings[stage.name] = run_stage(head, stage, resume, progress)
                previous = json.loads(summary_path.read_text()) if summary_path.exists() else {}
                summary_path.write_text(json.dumps({**previous, stage.name: timings[stage.name]}, indent=1))
    return timings
