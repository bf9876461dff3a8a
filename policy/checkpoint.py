"""Atomic, checksummed checkpoints: safetensors for weights, one folder per step.

A checkpoint is written into `step_XXXXXXXX.tmp/`, every file's sha256 goes into
`manifest.json`, and only then is the folder renamed to `step_XXXXXXXX/` (a rename is atomic
on POSIX). A reader verifies the manifest; a folder that fails (killed mid-write, bit rot,
truncated copy) is skipped with a warning and the previous checkpoint is used, so a crash
can never leave the run without a loadable state.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


class CorruptCheckpoint(RuntimeError):
    pass


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(
    root: str | Path,
    step: int,
    tensors: dict[str, dict[str, torch.Tensor]],
    objects: dict[str, Any] | None = None,
    state: dict[str, Any] | None = None,
    keep: int = 3,
) -> Path:
    """Write `tensors` (name → state dict, as safetensors), `objects` (torch.save, e.g. optimizer
    state) and `state` (JSON) atomically as checkpoint `step`; prune to the newest `keep`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f"step_{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, tensor_dict in tensors.items():
        save_file({k: v.detach().contiguous().cpu() for k, v in tensor_dict.items()}, tmp / f"{name}.safetensors")
    for name, obj in (objects or {}).items():
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        (tmp / f"{name}.pt").write_bytes(buffer.getvalue())
    (tmp / "state.json").write_text(json.dumps({"step": step, **(state or {})}, indent=1))
    manifest = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    for path in tmp.iterdir():  # make the bytes durable before the rename publishes them
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: str | Path) -> list[Path]:
    """Published checkpoint folders, oldest first (temporary folders are ignored)."""
    root = Path(root)
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and not p.name.endswith(".tmp"))


def verify_checkpoint(path: Path) -> None:
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        raise CorruptCheckpoint(f"{path}: no {MANIFEST}")
    manifest = json.loads(manifest_path.read_text())
    for name, digest in manifest.items():
        file = path / name
        if not file.exists() or _sha256(file) != digest:
            raise CorruptCheckpoint(f"{path}: {name} is missing or fails its sha256")


def load_checkpoint(path: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any], dict[str, Any]]:
    """(tensors, objects, state) of one verified checkpoint folder."""
    path = Path(path)
    verify_checkpoint(path)
    tensors = {p.stem: load_file(p) for p in sorted(path.glob("*.safetensors"))}
    objects = {p.stem: torch.load(p, weights_only=False) for p in sorted(path.glob("*.pt"))}
    state = json.loads((path / "state.json").read_text())
    return tensors, objects, state


def load_latest(root: str | Path):
    """The newest checkpoint that verifies, falling back past corrupt ones; None if there is none."""
    for path in reversed(list_checkpoints(root)):
        try:
            return load_checkpoint(path)
        except (CorruptCheckpoint, OSError, ValueError, json.JSONDecodeError) as err:
            log.warning("skipping corrupt checkpoint %s: %s", path, err)
    return None
