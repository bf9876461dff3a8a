"""build_report on a small recorded pipeline run, checked as files and in a real headless Chromium."""

import json
import re
import subprocess
from pathlib import Path

import pytest

from evaluation.gsb import GSBCounts
from evaluation.report import build_report
from evaluation.results import EvalResults, write_gif
from evaluation.vbench import summarize
from toyworld.world import SceneSpec, render

CHROMIUM = Path("/usr/bin/chromium")
PROMPT_SPECS = [SceneSpec("object", "square", "red", "gray", "right"), SceneSpec("object", "circle", "blue", "black", "up")]
SEEDS = [0, 1]
BUNDLES = ["pool/0", "pool/1"]


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def timeline(step: int, phases: list[str]) -> dict:
    """Phases one after another, each busy on every bundle (the colocated pool)."""
    intervals, start = [], 0.0
    for phase in phases:
        for bundle in BUNDLES:
            intervals.append({"phase": phase, "bundle": bundle, "start": start, "end": start + 0.4 + 0.1 * step})
        start += 0.5 + 0.1 * step
    return {"step": step, "intervals": intervals}


def grpo_record(step: int) -> dict:
    """The keys cluster/grpo.py's record() and AdvantageEstimator write, with plausible values."""
    record = {
        "step": step, "reward_mean": 0.5 + 0.01 * step, "reward_std": 0.1, "reward_group_std": 0.08,
        "reward/overall": 0.5 + 0.01 * step, "reward/smoothness": 0.7,
        "score/toy_judges.color": 0.6 + 0.01 * step, "score/toy_judges.motion": 0.4 + 0.02 * step,
        "score/toy_judges.overall": 0.5 + 0.01 * step,
        "reward_weight/overall": 1.0 if step < 5 else 0.5, "reward_weight/smoothness": 0.0 if step < 5 else 0.5,
        "joint_c/overall": 0.7, "joint_c/smoothness": 0.3, "curriculum/phase_index": float(step >= 5),
        "gated_samples": 0, "dropped_groups": 0, "actor_restarts": 0, "update/loss": -0.01, "update/kl": 0.001 * step,
        "weights_version": step, "utilisation": 0.8, "step_seconds": 1.5,
        "seconds/sample": 0.5, "seconds/evaluate": 0.4, "seconds/update": 0.6,
    }
    if step % 5 == 0:
        record["eval_reward"] = 0.5 + 0.01 * step
    return record


def write_stages(run: Path, stages=("sft", "grpo", "dpo"), steps: int = 10) -> None:
    records = {
        "sft": lambda s: {"step": s, "loss": 1.0 / (s + 1), "sft/flow_loss": 0.5 / (s + 1), "sft/motion_loss": 0.1,
                          "utilisation": 0.6},
        "grpo": grpo_record,
        "dpo": lambda s: {"step": s, "loss": 0.69 - 0.01 * s, "implicit_accuracy": 0.5 + 0.03 * s,
                          "reward_margin": 0.1 * s, "beta": 5000.0, "utilisation": 0.7},
    }
    phases = {"sft": ["update"], "grpo": ["sample", "evaluate", "update"], "dpo": ["pairs", "update"]}
    for stage in stages:
        write_jsonl(run / stage / "metrics.jsonl", [records[stage](s) for s in range(1, steps + 1)])
        write_jsonl(run / stage / "timeline.jsonl", [timeline(s, phases[stage]) for s in range(1, steps + 1)])


def write_eval(run: Path, stages=("base", "sft", "grpo", "dpo")) -> EvalResults:
    eval_dir = run / "eval"
    clips = {stage: [] for stage in stages}
    for p, spec in enumerate(PROMPT_SPECS):
        for seed in SEEDS:
            video = render(spec, seed=seed).video
            for stage in stages:
                relative = f"clips/{stage}/p{p}_s{seed}.gif"
                write_gif(video if stage != "base" else video.flip(0), eval_dir / relative)
                clips[stage].append(relative)
    results = EvalResults(
        prompts=[render(spec).prompt for spec in PROMPT_SPECS], seeds=SEEDS, stages=list(stages),
        metrics={stage: {"subject_consistency": summarize([0.4 + 0.1 * i, 0.6 + 0.1 * i]), "color": summarize([0.9, 0.9])}
                 for i, stage in enumerate(stages)},
        gsb={"dpo_vs_base": {"overall": GSBCounts(good=6, same=2, bad=2), "motion_quality": GSBCounts(good=1, same=0, bad=3)}}
        if {"base", "dpo"} <= set(stages) else {},
        clips=clips,
    )
    results.save(eval_dir / "eval.json")
    return results


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("pipeline")
    write_stages(run)
    write_eval(run)
    return build_report(run)


def image_sources(page: Path) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page.read_text())


def test_full_report_files_and_content(full_report):
    text = full_report.read_text()
    assert full_report.name == "index.html" and full_report.parent.name == "report"
    assert not re.search(r"(https?:)?//", text.replace("<!DOCTYPE html>", "")), "no external URL"
    sources = image_sources(full_report)
    pngs = {"curves_sft.png", "curves_grpo.png", "curves_dpo.png", "curriculum.png", "timeline_sft.png",
            "timeline_grpo.png", "timeline_dpo.png", "utilisation.png", "gsb_dpo_vs_base.png"}
    assert pngs <= set(sources)
    gifs = [s for s in sources if s.endswith(".gif")]
    # base and final (DPO) side by side, every prompt x seed in eval.json's order
    assert gifs == [f"eval/clips/{stage}/p{p}_s{s}.gif" for p in range(2) for s in SEEDS for stage in ("base", "dpo")]
    assert all((full_report.parent / s).is_file() for s in sources)
    # metric table, DPO column: summarize([0.7, 0.9]) = 0.8 +- t(0.975, df=1) 12.706 * std 0.1414 / sqrt(2) = 0.8 +- 1.271
    assert "<td class=\"num\">0.800 <small>[-0.471, 2.071]</small></td></tr>" in text
    # Table 1 row for G=6, S=2, B=2: win rate 75 %, preference 70 %, margin +40 %
    assert re.search(r"<th>overall</th><td class='num'>6</td><td class='num'>2</td><td class='num'>2</td>"
                     r"<td class='num'>75.00% .*?</td><td class='num'>70.00% .*?</td><td class='num'>\+40.00%</td>", text)
    assert "not run" not in text and "warning" not in text.split("</style>")[1]


def test_missing_stages_and_files_become_notes(tmp_path):
    write_stages(tmp_path, stages=("grpo",), steps=3)
    with open(tmp_path / "grpo" / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 4, "reward_me')  # a run killed mid-write
    page = build_report(tmp_path, tmp_path / "out")
    text = page.read_text()
    for note in ("SFT not run (no sft/metrics.jsonl)", "DPO not run (no dpo/metrics.jsonl)",
                 "DPO not run (no dpo/timeline.jsonl)", "Evaluation not run (no eval/eval.json)"):
        assert note in text
    assert "grpo/metrics.jsonl line 4: not a JSON object with a step; skipped" in text
    assert "Stages with training records: GRPO." in text
    assert set(image_sources(page)) == {"curves_grpo.png", "curriculum.png", "timeline_grpo.png", "utilisation.png"}


def test_invalid_eval_json_is_a_warning_not_a_crash(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "eval.json").write_text(json.dumps({"prompts": ["p"], "seeds": [0], "stages": ["grpo", "base"]}))
    text = build_report(tmp_path).read_text()
    assert "eval/eval.json is invalid" in text and "pipeline order" in text
    assert "SFT not run" in text


def test_only_one_stage_with_clips_and_a_missing_gif(tmp_path):
    results = write_eval(tmp_path, stages=("grpo",))
    (tmp_path / "eval" / results.clips["grpo"][0]).unlink()
    text = build_report(tmp_path).read_text()
    assert "Only GRPO has clips." in text
    assert "eval/clips/grpo/p0_s0.gif: missing clip" in text
    assert len([s for s in image_sources(tmp_path / "report" / "index.html") if s.endswith(".gif")]) == 3
    assert "0.900 <small>[0.900, 0.900]</small>" in text


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium (apt-get install chromium)")
def test_every_image_loads_in_headless_chromium(full_report, tmp_path):
    probe = full_report.parent / "probe.html"
    script = ("<script>window.addEventListener('load', () => { const images = Array.from(document.images);"
              " const ok = images.filter(i => i.complete && i.naturalWidth > 0).length;"
              " document.body.setAttribute('data-loaded', ok + '/' + images.length); });</script>")
    probe.write_text(full_report.read_text().replace("</body>", script + "</body>"))
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri(),
    ]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
    match = re.search(r'data-loaded="(\d+)/(\d+)"', dom)
    assert match, f"the page did not finish loading; Chromium printed: {dom[:500]!r}"
    expected = len(image_sources(full_report))
    assert (int(match[1]), int(match[2])) == (expected, expected)
    assert expected == 9 + 8  # 9 PNGs and 8 GIFs
