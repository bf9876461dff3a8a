"""The staged pipeline as `make demo` runs it, on a reduced config: real Ray jobs on a private head."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation.results import EvalResults

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TINY = """\
# python -m cluster.jobs.pipeline --config tiny.yaml
clip: {num_frames: 5, height: 24, width: 24}
policy: {model_path: null, motion_branch: {hidden_channels: 8}}
sampling: {num_steps: 3}
sft: {steps: 2, batch_size: 2, checkpoint_every: 1, physics: {enabled: true}, data: {kinds: [object, pan]}}
grpo: {steps: 2, prompts_per_step: 2, group_size: 4, prompt_pool: 4, eval_every: 0, clip_range: 0.2}
dpo: {steps: 2, batch_size: 2, eval_every: 2, pairs: {temporal: {clips: 2, held_out_clips: 1}}}
eval: {prompts: 2, seeds: [0, 1]}
"""
STAGES = "sft,grpo,dpo,eval,report"


def pipeline(config, out, *extra):
    return subprocess.run([sys.executable, "-m", "cluster.jobs.pipeline", "--config", str(config), "--out", str(out), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_every_stage_runs_as_a_job_and_a_failed_stage_stops_with_its_log(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    out = tmp_path / "run"
    # a stage that fails: DPO cannot find its human pairs; SFT and GRPO finish and are kept
    failed = pipeline(config, out, "--stages", STAGES, "--set", "dpo.pairs.human=/nonexistent/pairs.jsonl")
    assert failed.returncode == 1, failed.stdout[-2000:] + failed.stderr[-2000:]
    assert "stage dpo failed" in failed.stdout and f"full log: {out / 'dpo' / 'job.log'}" in failed.stdout.replace("\n", "")
    assert (out / "sft" / "DONE.json").exists() and (out / "grpo" / "DONE.json").exists()
    assert not (out / "dpo" / "DONE.json").exists() and "nonexistent" in (out / "dpo" / "job.log").read_text()

    # rerun: finished stages are skipped, the rest run to the report
    done = pipeline(config, out, "--stages", STAGES)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "sft: done earlier" in done.stdout and "grpo: done earlier" in done.stdout
    results = EvalResults.load(out / "eval" / "eval.json")
    assert results.stages == ["base", "sft", "grpo", "dpo"] and set(results.gsb) >= {"dpo_vs_base", "sft_vs_base"}
    assert all((out / "eval" / clip).exists() for clip in results.clips["dpo"])
    for stage in results.stages:  # GRPO's own reward on held-out prompts: here its one component, the toy judges' overall
        assert results.metrics[stage]["grpo_reward"].values == pytest.approx(results.metrics[stage]["reward"].values)
    dpo_records = [json.loads(line) for line in (out / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in dpo_records if "loss" in r] == [1, 2]
    assert (out / "report" / "index.html").stat().st_size > 0
    assert set(json.loads((out / "pipeline.json").read_text())) == {"sft", "grpo", "dpo", "eval", "report"}
