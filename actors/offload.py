"""Temporal multiplexing support (report §6.1.1): an actor outside the current phase gives its
accelerator memory back, and takes it again when its phase starts."""

from __future__ import annotations

import torch


def best_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Offloadable:
    """Mixin for actors that hold `self.policy` (or another module named by `offload_attr`).

    On an accelerator, `release()` moves the module to host memory and empties the CUDA cache;
    `wake()` moves it back. On CPU both only flip the state (there is no separate memory to give
    back), so the driver's phase protocol is the same everywhere.
    """

    offload_attr = "policy"
    device = torch.device("cpu")
    awake = True

    def release(self) -> bool:
        if self.awake and self.device.type == "cuda":
            getattr(self, self.offload_attr).to("cpu")
            torch.cuda.empty_cache()
        self.awake = False
        return self.awake

    def wake(self) -> bool:
        if not self.awake and self.device.type == "cuda":
            getattr(self, self.offload_attr).to(self.device)
        self.awake = True
        return self.awake
