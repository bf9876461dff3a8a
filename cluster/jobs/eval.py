"""`python -m cluster.jobs.eval --config configs/toy.yaml --pipeline-dir runs/pipeline`

Evaluates the base model and every finished stage under `--pipeline-dir` (its sft/, grpo/ and
dpo/ run dirs, in that order) on held-out prompts, writing `<pipeline-dir>/eval/eval.json` and
GIFs (see cluster/evaluate.py). Works standalone and under `ray job submit`.
"""

from pathlib import Path

from cluster.jobs.common import parse_job_args

TRAINED = ("sft", "grpo", "dpo")


def main(argv: list[str] | None = None) -> None:
    config, args = parse_job_args("Evaluate base, SFT, GRPO and DPO on held-out prompts.", argv, sections=("eval",),
                                  extra=[("--pipeline-dir", {"required": True, "help": "the pipeline's run dir"})])
    from cluster.evaluate import evaluate_pipeline  # after validation

    root = Path(args.pipeline_dir)
    stages = {"base": None, **{stage: str(root / stage) for stage in TRAINED if (root / stage / "checkpoints").is_dir()}}
    results = evaluate_pipeline(config, stages, root / "eval")
    final = results.stages[-1]
    print(f"eval done: {len(results.prompts)} held-out prompts x {len(results.seeds)} seeds, stages {results.stages}; "
          f"reward {results.metrics['base']['reward'].mean:.4f} (base) -> {results.metrics[final]['reward'].mean:.4f} ({final}); "
          f"{root / 'eval' / 'eval.json'}")


if __name__ == "__main__":
    main()
