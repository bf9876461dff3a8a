"""Joint Reward (report §3.5, eqs. 4-5): min-norm weights against independent exact solutions, and
eq. (5)'s weights under reward (curriculum) weights."""

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from algorithms.joint_reward import (
    component_weights,
    min_norm_solution,
    min_norm_weights,
    weighted_reward_sum,
)


def _objective(rows: np.ndarray, c: np.ndarray) -> float:
    return float(np.sum((c @ rows) ** 2))


def _reference_enumeration(rows: np.ndarray) -> float:
    """Independent exact optimum: on each support, min ||A_S^T c||^2 s.t. sum c = 1 by
    parametrising c = e_0 + D y (D spans {sum = 0}) and least squares; keep feasible minima."""
    n = rows.shape[0]
    best = np.inf
    for size in range(1, n + 1):
        for support in itertools.combinations(range(n), size):
            pts = rows[list(support)]
            if size == 1:
                best = min(best, _objective(pts, np.ones(1)))
                continue
            basis = pts[1:] - pts[0]  # point = pts[0] + y @ basis
            y = np.linalg.lstsq(basis.T, -pts[0], rcond=None)[0]
            c = np.concatenate([[1.0 - y.sum()], y])
            if c.min() >= -1e-12:
                best = min(best, _objective(pts, np.clip(c, 0, None) / np.clip(c, 0, None).sum()))
    return best


def _reference_slsqp(rows: np.ndarray) -> float:
    n = rows.shape[0]
    gram = rows @ rows.T
    res = minimize(
        lambda c: c @ gram @ c,
        np.full(n, 1.0 / n),
        jac=lambda c: 2 * gram @ c,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * n,
        constraints=[{"type": "eq", "fun": lambda c: c.sum() - 1.0, "jac": lambda c: np.ones(n)}],
        options={"ftol": 1e-16, "maxiter": 1000},
    )
    c = np.clip(res.x, 0, None)
    return _objective(rows, c / c.sum())


def _assert_on_simplex(c: torch.Tensor):
    assert c.min().item() >= -1e-12
    assert abs(c.sum().item() - 1.0) <= 1e-9


def _cases():
    rng = np.random.default_rng(1234)
    for trial in range(60):
        n = int(rng.integers(2, 7))
        b = int(rng.integers(4, 33))
        rows = rng.normal(size=(n, b)) * rng.uniform(0.1, 3.0, size=(n, 1))
        if trial % 3 == 0:  # group-normalised advantages live in the zero-mean subspace
            rows -= rows.mean(axis=1, keepdims=True)
        yield rows


def test_min_norm_matches_independent_exact_solutions():
    for rows in _cases():
        result = min_norm_solution(torch.from_numpy(rows))
        c = result.weights.numpy()
        _assert_on_simplex(result.weights)
        mine = _objective(rows, c)
        exact = _reference_enumeration(rows)
        assert abs(mine - exact) <= max(1e-8 * exact, 1e-12), (rows.shape, mine, exact)
        assert mine <= _reference_slsqp(rows) + max(1e-8 * exact, 1e-12)
        # certificate computed here, independently of the module: KKT gap of eq. (4)
        gram = rows @ rows.T
        g = gram @ c
        assert 2 * (c @ g - g.min()) <= 1e-10 * max(gram.diagonal().max(), 1.0)
        assert result.duality_gap <= 1e-10 * max(gram.diagonal().max(), 1.0)


def test_two_rewards_closed_form():
    rng = np.random.default_rng(7)
    for _ in range(50):
        a1, a2 = rng.normal(size=(2, int(rng.integers(4, 33))))
        expected = np.clip((a2 - a1) @ a2 / np.sum((a1 - a2) ** 2), 0.0, 1.0)
        c = min_norm_weights(torch.from_numpy(np.stack([a1, a2])))
        assert c[0].item() == pytest.approx(expected, abs=1e-12)
        assert c[1].item() == pytest.approx(1 - expected, abs=1e-12)


@pytest.mark.parametrize("n", [8, 11])
def test_large_n_active_set_is_exact(n):
    rng = np.random.default_rng(n)
    for _ in range(5):
        rows = rng.normal(size=(n, 16))
        rows -= rows.mean(axis=1, keepdims=True)
        result = min_norm_solution(torch.from_numpy(rows))
        _assert_on_simplex(result.weights)
        gram = rows @ rows.T
        assert result.duality_gap <= 1e-10 * gram.diagonal().max()
        assert result.objective <= _reference_slsqp(rows) + 1e-10


def test_dominated_and_conflicting_advantages():
    a = torch.tensor([1.0, -1.0, 2.0, -2.0], dtype=torch.float64)
    # same direction, larger norm: the smaller one alone is the min-norm point
    assert torch.allclose(min_norm_weights(torch.stack([a, 3 * a])), torch.tensor([1.0, 0.0], dtype=torch.float64))
    # exactly conflicting rewards cancel with equal weight
    assert torch.allclose(min_norm_weights(torch.stack([a, -a])), torch.tensor([0.5, 0.5], dtype=torch.float64))
    # orthogonal rewards: c_i proportional to 1/||A_i||^2
    e1 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    e2 = torch.tensor([0.0, 2.0, 0.0], dtype=torch.float64)
    assert torch.allclose(min_norm_weights(torch.stack([e1, e2])), torch.tensor([0.8, 0.2], dtype=torch.float64))


def test_degenerate_inputs_are_deterministic():
    a = torch.tensor([0.3, -0.1, 0.7, -0.9], dtype=torch.float64)
    assert torch.equal(min_norm_weights(a[None]), torch.ones(1, dtype=torch.float64))
    ident = min_norm_weights(torch.stack([a, a, a]))
    assert torch.allclose(ident, torch.full((3,), 1 / 3, dtype=torch.float64))
    zeros = min_norm_weights(torch.zeros(2, 5, dtype=torch.float64))
    assert torch.equal(zeros, torch.tensor([0.5, 0.5], dtype=torch.float64))
    with_zero_row = min_norm_weights(torch.stack([a, torch.zeros_like(a), 2 * a]))
    assert torch.allclose(with_zero_row, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    assert torch.equal(min_norm_weights(torch.stack([a, a, a])), ident)  # repeatable
    # duplicates share evenly for any N (also on the active-set path, N > 6)
    assert torch.allclose(min_norm_weights(a.repeat(8, 1)), torch.full((8,), 1 / 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="NaN"):
        min_norm_weights(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))


def _c(advantages, mode, weights=None):
    return component_weights(torch.tensor(advantages, dtype=torch.float64), mode, weights).tolist()


def test_min_norm_solves_over_the_kept_rewards_then_applies_their_weights():
    a, b = [1.0, -1.0, 2.0, -2.0], [-1.0, 1.0, -2.0, 2.0]  # exactly conflicting: eq. 4 gives (½, ½)
    assert _c([a, b], "min_norm") == pytest.approx([0.5, 0.5])
    assert _c([a, b], "min_norm", [1.0, 0.0]) == pytest.approx([1.0, 0.0])  # weight 0: c = 0 (issue 11)
    assert _c([a, b], "min_norm", [0.2, 0.8]) == pytest.approx([0.2, 0.8])  # ∝ (0.2·½, 0.8·½)
    # three rewards, one at weight 0: eq. 4 over the other two (closed form for e1 ⟂ e2:
    # m = (0.8, 0.2)), then weights (0.5, 0.25): c ∝ (0.4, 0.05)
    e1, e2, e3 = [1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.1]
    assert _c([e1, e2, e3], "min_norm", [0.5, 0.25, 0.0]) == pytest.approx([0.4 / 0.45, 0.05 / 0.45, 0.0])
    assert _c([e1, e2, e3], "min_norm")[2] > 0.9  # unweighted, the short e3 would dominate


def test_min_norm_leaves_out_rewards_without_signal():
    a = [0.3, -0.1, 0.7, -0.9]
    assert min_norm_weights(torch.tensor([a, [0.0] * 4], dtype=torch.float64)).tolist() == [0.0, 1.0]  # eq. 4 alone
    assert _c([a, [0.0] * 4], "min_norm") == [1.0, 0.0]  # the saturated reward does not silence the other
    assert _c([[0.0] * 4, [0.0] * 4], "min_norm", [3.0, 1.0]) == pytest.approx([0.75, 0.25])


def test_advantage_sum_uses_the_reward_weights_and_errors_name_the_problem():
    adv = [[1.0, -1.0], [0.5, -0.5], [2.0, -2.0]]
    assert _c(adv, "advantage_sum") == [1.0, 1.0, 1.0]
    assert _c(adv, "advantage_sum", [1.0, 0.5, 2.0]) == [1.0, 0.5, 2.0]
    with pytest.raises(ValueError, match="weighted_reward_sum"):
        _c(adv, "weighted_sum")
    with pytest.raises(ValueError, match="'nope'.*min_norm"):
        _c(adv, "nope")
    with pytest.raises(ValueError, match="shape"):
        _c(adv, "advantage_sum", [1.0, 2.0])
    with pytest.raises(ValueError, match=">= 0"):
        _c(adv, "min_norm", [1.0, -1.0, 1.0])
    rewards = torch.tensor([[[1.0, 2.0]], [[3.0, 5.0]]])
    assert weighted_reward_sum(rewards, [0.25, 0.75]).tolist() == [[2.5, 4.25]]
