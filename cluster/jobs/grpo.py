"""`python -m cluster.jobs.grpo --config configs/toy.yaml [--resume] [--set grpo.steps=5]`

Works standalone (starts local Ray) and under `ray job submit` (RAY_ADDRESS is set there).
"""

from cluster.jobs.common import parse_job_args


def main(argv: list[str] | None = None) -> None:
    config, args = parse_job_args("GRPO (Stage II) on a Ray pool.", argv, sections=("grpo",))
    from cluster import grpo  # after validation: a bad config fails before Ray or torch models load

    records = grpo.run(config, resume=args.resume)
    evals = [(r["step"], r["eval_reward"]) for r in records if "eval_reward" in r]
    summary = " -> ".join(f"{value:.4f} (step {step})" for step, value in evals[:1] + evals[-1:])
    print(f"GRPO done: {sum('reward_mean' in r for r in records)} steps; fixed-seed eval reward {summary}; "
          f"curve at {config.run_dir}/reward_curve.png")


if __name__ == "__main__":
    main()
