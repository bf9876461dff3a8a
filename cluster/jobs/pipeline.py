"""`python -m cluster.jobs.pipeline --config configs/pipeline.yaml [--out runs/pipeline] [--stages sft,grpo]`

pretrain → SFT → GRPO → DPO → eval → report, each a Ray job on a private local head (see
cluster/pipeline.py); a rerun resumes from the last finished stage.
"""

import argparse
import sys
import time

from cluster.config import ConfigError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config, e.g. configs/toy.yaml")
    parser.add_argument("--out", default="runs/pipeline", help="the pipeline's run dir (one folder per stage)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="override for every stage")
    parser.add_argument("--stages", default=None, help="comma-separated subset of pretrain,sft,grpo,dpo,eval,report")
    args = parser.parse_args(argv)
    from cluster.pipeline import StageFailed, console, run_pipeline

    started = time.monotonic()
    try:
        timings = run_pipeline(args.config, args.out, args.set, args.stages.split(",") if args.stages else None)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(err, file=sys.stderr)
        raise SystemExit(2) from None
    except StageFailed as err:
        console.print(f"[bold red]{err}[/bold red]")
        console.print(f"Rerun the same command to resume from the failed stage (finished stages are kept in {args.out}).")
        raise SystemExit(1) from None
    total = time.monotonic() - started
    if timings:
        console.print("stage seconds: " + ", ".join(f"{name} {seconds:.0f}" for name, seconds in timings.items())
                      + f"; total {total:.0f} s")
    else:
        console.print(f"every stage was done earlier; delete a stage's DONE.json under {args.out} to rerun it")
    console.print(f"[bold green]report: {args.out}/report/index.html[/bold green]")


if __name__ == "__main__":
    main()
