"""The DPO β schedule (report §4.3): start high for stability, anneal slightly, then hold a floor.

β is the strength of the KL anchor to the Stage-II reference: too low and the policy degenerates
visually, too high and it cannot unlearn established artifacts (report §4.3). Diffusion-DPO's β
multiplies a mean squared denoising error, so useful values are in the thousands: 5000 in the
launchers of Diffusion-DPO (SD1.5/SDXL) and VideoDPO; users report loss blow-ups at β 2000–5000
combined with large learning rates, so lower the learning rate before lowering β.

The schedule is a pure function of the step (no state), so a resumed run gets the exact β.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DPOBetaSchedule(BaseModel):
    """β(step): `start` at step 0, `shape` (cosine or linear) down to `floor` at `anneal_steps`, then `floor`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: float = Field(5000.0, gt=0)
    floor: float = Field(4000.0, gt=0)
    anneal_steps: int = Field(1000, ge=0)
    shape: Literal["cosine", "linear"] = "cosine"

    @model_validator(mode="after")
    def _floor_below_start(self):
        if self.floor > self.start:
            raise ValueError(f"floor ({self.floor}) must be <= start ({self.start}): the schedule anneals β down")
        return self

    def beta_at(self, step: int) -> float:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if step >= self.anneal_steps:
            return self.floor
        progress = step / self.anneal_steps
        remaining = 0.5 * (1 + math.cos(math.pi * progress)) if self.shape == "cosine" else 1 - progress
        return self.floor + (self.start - self.floor) * remaining
