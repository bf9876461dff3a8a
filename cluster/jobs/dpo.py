"""`python -m cluster.jobs.dpo --config configs/toy.yaml [--resume] [--set dpo.steps=5]`

Works standalone (starts local Ray) and under `ray job submit` (RAY_ADDRESS is set there).
"""

from cluster.jobs.common import parse_job_args


def main(argv: list[str] | None = None) -> None:
    config, args = parse_job_args("Diffusion-DPO (Stage III) on a Ray pool.", argv, sections=("dpo",))
    from cluster import dpo  # after validation: a bad config fails before Ray or torch models load

    records = [r for r in dpo.run(config, resume=args.resume) if "loss" in r]
    held_out = [r["held_out/implicit_accuracy"] for r in records if "held_out/implicit_accuracy" in r]
    print(f"DPO done: {len(records)} steps; implicit accuracy {records[-1]['implicit_accuracy']:.3f}"
          + (f", held-out {held_out[-1]:.3f}" if held_out else "") + f"; checkpoint in {config.run_dir}/checkpoints")


if __name__ == "__main__":
    main()
