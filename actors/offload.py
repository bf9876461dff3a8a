"""Temporal multiplexing support (report §6.1.1): an actor outside the current phase gives its
accelerator memory back, and takes it again when its phase starts.

`Offloader` moves every parameter, buffer and optimizer-state tensor it manages between the
compute device and host memory (pinned when the device is a GPU, so the copies back are
asynchronous DMA), then empties the CUDA cache so the memory really returns to the other roles
on the bundle. Tensors keep their identity (`param.data` is swapped), so optimizers and hooks
stay valid. On a CPU device nothing moves, but the same bookkeeping runs, so the driver's phase
protocol and its memory accounting are the same everywhere.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from actors.device import memory_stats


class Offloader:
    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.host = torch.device("cpu")
        self.modules: list[nn.Module] = []
        self.optimizers: list[torch.optim.Optimizer] = []
        self.averages: list = []  # weight averages with `shadow_params` (diffusers' EMAModel)
        self.awake = True

    def manage(self, *items) -> "Offloader":
        """Modules, optimizers (their state) and weight averages (their shadow parameters); None is skipped."""
        for item in items:
            if isinstance(item, torch.optim.Optimizer):
                self.optimizers.append(item)
            elif hasattr(item, "shadow_params"):
                self.averages.append(item)
            elif item is not None:
                self.modules.append(item)
        return self

    def tensors(self) -> Iterator[torch.Tensor]:
        """Every managed tensor once: parameters, buffers, optimizer state, then weight averages."""
        seen: set[int] = set()
        for module in self.modules:
            for tensor in [*module.parameters(), *module.buffers()]:
                if id(tensor) not in seen:
                    seen.add(id(tensor))
                    yield tensor
        for optimizer in self.optimizers:
            for state in optimizer.state.values():
                for value in state.values():
                    if torch.is_tensor(value) and id(value) not in seen:
                        seen.add(id(value))
                        yield value
        for average in self.averages:
            for tensor in average.shadow_params:
                if id(tensor) not in seen:
                    seen.add(id(tensor))
                    yield tensor

    def managed_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def device_bytes(self) -> int:
        """Bytes of managed tensors that sit on the accelerator now (0 on a CPU device)."""
        if self.device.type == "cpu":
            return 0
        return sum(t.numel() * t.element_size() for t in self.tensors() if t.device.type == self.device.type)

    def release(self) -> int:
        """Move everything to (pinned) host memory; returns the bytes moved off the accelerator."""
        if not self.awake:
            return 0
        for module in self.modules:
            module.zero_grad(set_to_none=True)  # gradients are dead between updates: drop, don't copy
        moved = self._move(self.host, pin=self.device.type == "cuda")
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
        self.awake = False
        return moved

    def wake(self) -> int:
        """Move everything back to the compute device; returns the bytes moved."""
        if self.awake:
            return 0
        moved = self._move(self.device, pin=False)
        self.awake = True
        return moved

    def _move(self, target: torch.device, pin: bool) -> int:
        moved = 0
        for tensor in self.tensors():
            if tensor.device.type == target.type:
                continue
            if pin:  # straight into page-locked memory: one copy, and an async DMA on the way back
                copy = torch.empty_like(tensor.data, device=target, pin_memory=True)
                copy.copy_(tensor.data, non_blocking=True)
            else:
                copy = tensor.data.to(target, non_blocking=True)
            tensor.data = copy
            moved += tensor.numel() * tensor.element_size()
        return moved


class PhaseMember:
    """`release()` / `wake()` for an actor whose accelerator state is `self.offloader`'s.

    `release()` returns what the step record keeps per role: the accelerator bytes the actor
    still holds while idle, its peak while it was awake, and the bytes it manages.
    """

    offloader: Offloader

    def release(self) -> dict[str, int]:
        self.offloader.release()
        stats = memory_stats(self.offloader.device)
        return {"idle_bytes": stats["allocated_bytes"], "peak_bytes": stats["peak_bytes"],
                "managed_bytes": self.offloader.managed_bytes()}

    def wake(self) -> bool:
        self.offloader.wake()
        if self.offloader.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.offloader.device)
        return True

    @property
    def awake(self) -> bool:
        return self.offloader.awake
