"""`python -m cluster.jobs.sft --config configs/toy.yaml [--resume] [--set sft.steps=5]`

Works standalone (starts local Ray) and under `ray job submit` (RAY_ADDRESS is set there).
"""

from cluster.jobs.common import parse_job_args


def main(argv: list[str] | None = None) -> None:
    config, args = parse_job_args("Supervised fine-tuning (Stage I) on a Ray pool.", argv, sections=("sft",))
    from cluster import sft  # after validation: a bad config fails before Ray or torch models load

    records = sft.run(config, resume=args.resume)
    print(f"SFT done: {len(records)} steps; loss {records[0]['loss']:.4f} -> {records[-1]['loss']:.4f}; "
          f"checkpoint in {config.run_dir}/checkpoints (GRPO starts from it with policy.init_from={config.run_dir})")


if __name__ == "__main__":
    main()
