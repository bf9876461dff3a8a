"""`python -m cluster.jobs.grpo --config configs/toy.yaml [--resume] [--set grpo.steps=5]`

Works standalone (starts local Ray) and under `ray job submit` (RAY_ADDRESS is set there).
"""

from cluster.jobs.common import parse_job_args


def main(argv: list[str] | None = None) -> None:
    config, args = parse_job_args("GRPO (Stage II) on a Ray pool.", argv)
    from cluster import grpo  # after validation: a bad config fails before Ray or torch models load

    records = grpo.run(config, resume=args.resume)
    if records:
        first, last = records[0], records[-1]
        print(f"GRPO done: {len(records)} steps, reward {first['reward_mean']:.4f} -> {last['reward_mean']:.4f}; "
              f"curve at {config.run_dir}/reward_curve.png")


if __name__ == "__main__":
    main()
