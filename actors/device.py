"""Where an actor computes: the ONE place that decides an actor's device.

Ray gives an actor placed with `num_gpus > 0` (fractions included) its GPU ids and sets
CUDA_VISIBLE_DEVICES to them, so inside the actor the assigned GPU is `cuda:0`. An actor that
holds no GPU share computes on the CPU, even on a node with GPUs: it must never take a device
Ray assigned to someone else. On CPU machines the pool's stand-in `accelerator` resource is not
a device, so those actors compute on the CPU as well.
"""

from __future__ import annotations

import torch


def device_for(gpu_ids: list, cuda_available: bool) -> torch.device:
    """`cuda:0` (the first GPU Ray made visible) when the actor holds a GPU share, else the CPU.

    A GPU share on a process that cannot see CUDA is a broken node or environment, not a reason
    to fall back silently to a device a hundred times slower.
    """
    if not gpu_ids:
        return torch.device("cpu")
    if not cuda_available:
        raise RuntimeError(
            f"Ray assigned GPU(s) {gpu_ids} to this actor but torch cannot use CUDA "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}); install a CUDA build of torch"
        )
    return torch.device("cuda:0")


def assigned_device() -> torch.device:
    """The device of the calling actor, from the GPU ids Ray assigned it (CPU outside Ray)."""
    import ray

    gpu_ids = ray.get_gpu_ids() if ray.is_initialized() else []
    return device_for(gpu_ids, torch.cuda.is_available())


def memory_stats(device: torch.device) -> dict[str, int]:
    """Accelerator bytes this process holds now and at its peak since the last reset (0 on CPU,
    where there is no separate accelerator memory to hold)."""
    if device.type != "cuda":
        return {"allocated_bytes": 0, "peak_bytes": 0}
    return {"allocated_bytes": torch.cuda.memory_allocated(device), "peak_bytes": torch.cuda.max_memory_allocated(device)}


def tensor_devices(**groups) -> dict[str, str]:
    """{group: comma-joined device types of its tensors} for the non-empty groups, e.g.
    `tensor_devices(transformer=model.parameters())` → {"transformer": "cuda"}."""
    out = {}
    for name, tensors in groups.items():
        types = sorted({tensor.device.type for tensor in tensors})
        if types:
            out[name] = ",".join(types)
    return out
