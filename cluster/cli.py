"""`teleboost`: one command for every stage, each wrapping the job module `ray job submit` runs.

    teleboost pipeline --config configs/pipeline.yaml        # pretrain → SFT → GRPO → DPO → eval → report
    teleboost grpo --config configs/toy.yaml --set grpo.steps=5 [--resume]
    teleboost grpo --help                               # the stage's flags, then every config field it reads
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "pretrain": ("cluster.jobs.pretrain", "pretrain the toy world's base model (cached)"),
    "sft": ("cluster.jobs.sft", "Stage I: supervised fine-tuning"),
    "grpo": ("cluster.jobs.grpo", "Stage II: GRPO with ViPO, BPGO, Self-Paced, Joint Reward"),
    "dpo": ("cluster.jobs.dpo", "Stage III: Diffusion-DPO"),
    "eval": ("cluster.jobs.eval", "evaluate base and every stage on held-out prompts"),
    "report": ("cluster.jobs.report", "build the HTML report of a pipeline run"),
    "serve-rewards": ("reward_services.serve", "the reward HTTP endpoint (Ray Serve)"),
    "pipeline": ("cluster.jobs.pipeline", "every stage in order as Ray jobs on a private local head"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [__doc__.strip(), "", "commands:"]
    lines += [f"  {name:<{width}}  {help_text}" for name, (_, help_text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"teleboost: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    sys.argv[0] = f"teleboost {command}"  # argparse's usage line names the command the user typed
    importlib.import_module(COMMANDS[command][0]).main(rest)


if __name__ == "__main__":
    main()
