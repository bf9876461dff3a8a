"""What every `python -m cluster.jobs.<stage>` entry point shares: CLI, logging, threads."""

from __future__ import annotations

import argparse
import logging
import sys

import yaml
from pydantic import BaseModel

import torch

from cluster.config import ConfigError, TeleBoostConfig, load_config, parse_overrides


def parse_job_args(description: str, argv: list[str] | None = None, extra=(), sections=()) -> tuple[TeleBoostConfig, argparse.Namespace]:
    """Parse `--config`, `--set a.b=c`, `--resume` (and `extra` (flag, kwargs) arguments); exit
    with the field's path on a bad config. `--help` ends with every field of `sections` (the
    stage's own config) as an override with its default and meaning."""
    parser = argparse.ArgumentParser(description=description, epilog=config_help(sections) if sections else None,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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


def config_help(sections) -> str:
    """Lines `--set section.field=<default>  description` for every (nested) field of `sections`,
    plus the shared sections' names, so `--help` shows what a stage reads and how to override it."""
    lines = ["config fields this stage reads (override any with --set; shared sections: clip, world, prompts, "
             "policy, sampling, rewards, pool — see cluster/config.py):"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            path = f"{prefix}.{name}"
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, path)
                continue
            default = field.get_default(call_default_factory=True)
            shown = yaml.safe_dump(list(default) if isinstance(default, tuple) else default, default_flow_style=True)
            text = f"  --set {path}={shown.strip().removesuffix('...').strip()}"
            lines.append(f"{text:<48} {field.description or ''}".rstrip())

    for section in sections:
        walk(TeleBoostConfig.model_fields[section].annotation, section)
    return "\n".join(lines)
