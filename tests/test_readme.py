"""The README tells the truth: every command it shows exists and every config and override it
names validates (the long commands themselves are run by their own tests: the pipeline, each
stage, the benchmarks' --quick/--tiny modes; its HTTP example runs in tests/reward_services)."""

import importlib
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from cluster.cli import COMMANDS
from cluster.config import load_config, parse_overrides

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
CODE = re.findall(r"`([^`\n]+)`", README) + [line for block in re.findall(r"```bash\n(.*?)```", README, re.S)
                                             for line in block.splitlines()]
COMMAND_LINES = [c.split("#")[0].strip() for c in CODE if re.match(r"(make|python -m|teleboost|ray job submit)\b", c.strip())]


def test_the_readme_shows_commands_at_all():
    assert len(COMMAND_LINES) > 25 and any(c.startswith("teleboost pipeline") for c in COMMAND_LINES)


def test_every_make_target_exists():
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))
    named = {t for c in COMMAND_LINES if c.startswith("make ") for t in c.split()[1:] if not t.startswith("-")}
    assert named and named <= targets, named - targets


def test_every_module_and_teleboost_command_exists_with_a_main():
    modules = {m for c in COMMAND_LINES for m, template in re.findall(r"python -m ([\w.]+)(<?)", c) if not template}
    modules |= {COMMANDS[c.split()[1]][0] for c in COMMAND_LINES if c.startswith("teleboost ") and not c.split()[1].startswith("<")}
    assert {"cluster.jobs.grpo", "bench.dp_equivalence", "reward_services.serve"} <= modules
    for module in sorted(modules):
        if module == "pytest":
            continue
        assert importlib.util.find_spec(module) is not None, module
        assert callable(getattr(importlib.import_module(module), "main", None)), module


@pytest.mark.parametrize("command", sorted({c for c in COMMAND_LINES if "--config configs/" in c}))
def test_every_config_and_override_in_the_readme_validates(command):
    words = shlex.split(command.replace("...", "").replace("[", "").replace("]", ""))
    config = words[words.index("--config") + 1]
    overrides = [words[i + 1] for i, word in enumerate(words) if word == "--set" and i + 1 < len(words)
                 and "=" in words[i + 1] and "k=v" not in words[i + 1] and "section.field" not in words[i + 1]]
    if "reward_services.serve" in command:
        from reward_services.serve import load_server_config

        load_server_config(ROOT / config)
        return
    load_config(ROOT / config, parse_overrides(overrides))
