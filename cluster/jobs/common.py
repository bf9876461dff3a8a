"""What every `python -m cluster.jobs.<stage>` entry point shares: CLI, logging, threads."""

from __future__ import annotations

import argparse
import logging
import sys

import torch

from cluster.config import ConfigError, TeleBoostConfig, load_config, parse_overrides


def parse_job_args(description: str, argv: list[str] | None = None, extra=()) -> tuple[TeleBoostConfig, argparse.Namespace]:
    """Parse `--config`, `--set a.b=c`, `--resume` (and `extra` (flag, kwargs) arguments); exit
    with the field's path on a bad config."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="YAML config, e.g. configs/toy.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="override a config field")
    parser.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint in run_dir")
    for flag, kwargs in extra:
        parser.add_argument(flag, **kwargs)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stdout)
    try:
        config = load_config(args.config, parse_overrides(args.set))
    except (ConfigError, FileNotFoundError) as err:
        print(err, file=sys.stderr)
        raise SystemExit(2) from None
    torch.set_num_threads(config.policy.torch_threads)
    return config, args
