"""Training and evaluation prompts: the toy world's grammar, or a file for real models."""

from __future__ import annotations

import json
from pathlib import Path

from toyworld.world import ToyWorld


def load_prompts(config, count: int, seed: int, split: str = "train") -> list[str]:
    """`count` prompts from `config.prompts`: drawn from the toy world's grammar (with `seed`) in
    `split` — training stages draw "train", evaluation "held_out" (`toyworld.world.is_held_out`) —
    or the first `count` distinct prompts of a file (one per line, or JSONL rows with a "prompt")."""
    source = config.prompts
    if source.source == "toy":
        return ToyWorld(*config.clip.shape, kinds=config.world.kinds, split=split).prompts(count, seed=seed)
    prompts = []
    for number, line in enumerate(Path(source.path).read_text().splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                line = json.loads(line)["prompt"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{source.path}:{number}: a JSONL row needs a \"prompt\" string ({err})") from None
        prompts.append(line)
    if not prompts:
        raise ValueError(f"prompts.path={source.path!r} holds no prompts")
    return list(dict.fromkeys(prompts))[:count]


def balanced_shards(items: list, num_shards: int) -> list[list]:
    """Contiguous shards whose sizes differ by at most one (concatenating them keeps the order);
    every shard non-empty when there are at least `num_shards` items."""
    base, extra = divmod(len(items), num_shards)
    shards, start = [], 0
    for index in range(num_shards):
        size = base + (index < extra)
        shards.append(items[start:start + size])
        start += size
    return [shard for shard in shards if shard]

