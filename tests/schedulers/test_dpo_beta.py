"""The DPO β schedule (report §4.3): from `start` down to `floor`, monotone, then constant."""

import pytest
from pydantic import ValidationError

from schedulers.dpo_beta import DPOBetaSchedule


@pytest.mark.parametrize("shape", ["cosine", "linear"])
def test_endpoints_monotone_and_constant_after_annealing(shape):
    schedule = DPOBetaSchedule(start=5000, floor=3000, anneal_steps=100, shape=shape)
    betas = [schedule.beta_at(step) for step in range(150)]
    assert betas[0] == 5000 and betas[100] == 3000 and set(betas[100:]) == {3000}
    assert all(a > b for a, b in zip(betas[:101], betas[1:101]))  # strictly down while annealing
    assert betas[50] == pytest.approx(4000)  # both shapes pass the midpoint at half time
    quarter = 3000 + 2000 * (0.5 * (1 + 2**-0.5) if shape == "cosine" else 0.75)
    assert betas[25] == pytest.approx(quarter)


def test_state_free_and_validated():
    schedule = DPOBetaSchedule(start=5000, floor=4000, anneal_steps=10)
    assert DPOBetaSchedule(**schedule.model_dump()).beta_at(7) == schedule.beta_at(7)  # resume: same β
    assert DPOBetaSchedule(start=2000, floor=2000, anneal_steps=0).beta_at(0) == 2000  # constant β
    with pytest.raises(ValidationError, match="floor"):
        DPOBetaSchedule(start=1000, floor=2000)
    with pytest.raises(ValidationError, match="extra"):
        DPOBetaSchedule(start=1000, flor=500)
    with pytest.raises(ValueError, match="step"):
        schedule.beta_at(-1)
