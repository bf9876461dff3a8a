"""Joint Reward: multi-objective balancing of per-reward advantages (report §3.5, eqs. 4-5).

With N reward models, each gives its own group-relative advantage vector A_i over the B samples
of a batch. Summing them lets one reward's direction cancel or swamp another's (report §3.5); the
report instead solves, at the advantage level rather than the gradient level,

    min_c || sum_i c_i A_i ||^2   s.t.  sum_i c_i = 1,  c_i >= 0          (report eq. 4)

and trains on L = sum_i c_i L_i (eq. 5): one clipped surrogate per reward, each with its own
advantages (`algorithms.grpo.clipped_surrogate` with advantages [N, B] and these c). Clipping
makes the surrogate non-linear in the advantage, so that is not the surrogate of sum_i c_i A_i.

Geometrically eq. 4 is the minimum-norm point of a polytope; only the Gram matrix
G = A A^T (N x N) matters, so the cost is independent of B after one matmul.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple, Sequence

import numpy as np
import torch

_ENUMERATE_MAX_N = 6  # 2^6 - 1 = 63 supports: exact enumeration is cheaper than anything clever
_MODES = ("advantage_sum", "min_norm")


class MinNormResult(NamedTuple):
    weights: torch.Tensor  # [N] on the simplex
    objective: float  # ||sum_i c_i A_i||^2
    duality_gap: float  # Frank-Wolfe gap 2 (c^T G c - min_j (G c)_j) >= objective - optimum


def duality_gap(gram: np.ndarray, weights: np.ndarray) -> float:
    """Frank-Wolfe gap of f(c) = c^T G c on the simplex: an optimality certificate.

    gap(c) = max_{s in simplex} grad f(c)^T (c - s) = 2 (c^T G c - min_j (G c)_j).
    By convexity f(c) - f* <= gap(c), and gap(c) = 0 iff c satisfies the KKT conditions of eq. (4):
    (G c)_j equal to c^T G c on the support and >= it off the support.
    """
    grad_half = gram @ weights
    return float(max(0.0, 2.0 * (weights @ grad_half - grad_half.min())))


def _kkt_weights(gram: np.ndarray, support: Sequence[int]) -> np.ndarray:
    """Minimise c_S^T G_SS c_S s.t. 1^T c_S = 1 with no sign constraint; returns c in R^N.

    Solves [[G_SS, 1], [1^T, 0]] [c_S; -lam] = [0; 1]. Least squares gives the minimum-norm solution
    when the system is singular (identical or affinely dependent rows), which splits ties evenly.
    """
    k = len(support)
    kkt = np.zeros((k + 1, k + 1))
    kkt[:k, :k] = gram[np.ix_(support, support)]
    kkt[:k, k] = 1.0
    kkt[k, :k] = 1.0
    rhs = np.zeros(k + 1)
    rhs[k] = 1.0
    weights = np.zeros(gram.shape[0])
    weights[list(support)] = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:k]
    return weights


def _feasible_or_none(weights: np.ndarray) -> np.ndarray | None:
    """Snap rounding-level entries (|c_i| <= 1e-14) to 0 and renormalise; None if the point leaves
    the simplex."""
    if not np.all(np.isfinite(weights)) or weights.min() < -1e-12:
        return None
    weights = np.where(weights > 1e-14, weights, 0.0)
    total = weights.sum()
    return weights / total if total > 0.0 else None


def _min_norm_enumerate(gram: np.ndarray) -> np.ndarray:
    """Exact: the optimum lies in the relative interior of some face of the simplex, where it solves
    the equality-constrained problem on that face's support. Try every support and keep the feasible
    candidate of least objective. Ties (within rounding, e.g. several combinations that all cancel to
    0) go to the LARGER support, so weight is spread over the tied rewards instead of an arbitrary
    one taking it all."""
    n = gram.shape[0]
    tie_tol = 64.0 * np.finfo(np.float64).eps * max(float(np.diag(gram).max()), 1e-300)
    best, best_obj, best_size = None, np.inf, 0
    for size in range(1, n + 1):
        for support in itertools.combinations(range(n), size):
            weights = _feasible_or_none(_kkt_weights(gram, support))
            if weights is None:
                continue
            obj = float(weights @ gram @ weights)
            if obj < best_obj - tie_tol or (obj <= best_obj + tie_tol and size > best_size):
                best, best_obj, best_size = weights, min(obj, best_obj), size
    return best


def _project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto the probability simplex (sort-based, exact)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    rho = np.nonzero(u - css / np.arange(1, len(v) + 1) > 0)[0][-1]
    return np.clip(v - css[rho] / (rho + 1.0), 0.0, None)


def _min_norm_active_set(gram: np.ndarray, gap_tol: float, max_iter: int = 1000) -> np.ndarray:
    """Primal active-set method (Lawson-Hanson style) for N > 6, polished by projected gradient.

    Start at the best vertex; repeatedly add the index with the most negative reduced gradient,
    solve the KKT system on the support, and when that solution leaves the simplex walk toward it
    until the first weight hits zero and drop it. Each added index is a descent direction, so the
    objective never increases. Stops when the duality gap certifies optimality (<= gap_tol).
    """
    n = gram.shape[0]
    weights = np.zeros(n)
    weights[int(np.argmin(np.diag(gram)))] = 1.0
    support = [int(np.argmin(np.diag(gram)))]
    for _ in range(max_iter):
        if duality_gap(gram, weights) <= gap_tol:
            return weights
        grad_half = gram @ weights
        outside = [j for j in range(n) if j not in support]
        if not outside:
            break
        support.append(min(outside, key=lambda j: grad_half[j]))
        for _ in range(n):  # inner loop: drop indices until the support solution is feasible
            target = _kkt_weights(gram, support)
            if target.min() >= 0.0:
                weights = target
                break
            step = min(weights[i] / (weights[i] - target[i]) for i in support if target[i] < 0.0)
            weights = np.clip(weights + step * (target - weights), 0.0, None)
            weights /= weights.sum()
            support = [i for i in support if weights[i] > 1e-15]
    # Fallback for degenerate cycling: projected gradient (step 1/L) until the gap is certified.
    lipschitz = 2.0 * max(np.linalg.eigvalsh(gram).max(), 1e-300)
    for _ in range(100_000):
        if duality_gap(gram, weights) <= gap_tol:
            break
        weights = _project_simplex(weights - 2.0 * (gram @ weights) / lipschitz)
    return weights


def _solve_unique(rows: np.ndarray) -> np.ndarray:
    """Dispatch on N for pairwise-distinct rows [N, B] (float64): see `min_norm_solution`."""
    gram = rows @ rows.T  # report eq. (4) depends on A only through G = A A^T
    n = gram.shape[0]
    if n == 1:
        return np.ones(1)
    if n == 2:
        diff = rows[1] - rows[0]  # from the rows, not G, to avoid cancellation in ||A_1 - A_2||^2
        c1 = float(np.clip((diff @ rows[1]) / (diff @ diff), 0.0, 1.0))
        return np.array([c1, 1.0 - c1])
    if n <= _ENUMERATE_MAX_N:
        return _min_norm_enumerate(gram)
    return _min_norm_active_set(gram, gap_tol=1e-12 * max(float(np.diag(gram).max()), 1e-300))


def min_norm_solution(advantages: torch.Tensor) -> MinNormResult:
    """Solve report eq. (4) exactly and return the weights with their optimality certificate.

    advantages: [N, B] (or [N, ...], flattened), one row per reward model. Work is in float64.
      Exact duplicate rows are merged first and share their weight evenly (k identical rows ->
      1/k each of their total), so N below counts distinct rows.
      N = 1: c = [1].
      N = 2: closed form c_1 = clip(((A_2 - A_1) . A_2) / ||A_1 - A_2||^2, 0, 1).
      N <= 6: enumerate every support and solve its KKT system (exact, deterministic ties).
      N > 6: primal active-set method, polished by projected gradient until the duality gap
             2 (c^T G c - min_j (G c)_j) <= 1e-12 * max_i ||A_i||^2.
    The returned duality_gap bounds objective - optimum from above (see `duality_gap`).
    """
    if advantages.dim() < 1 or advantages.shape[0] < 1:
        raise ValueError(f"advantages must be [N, B] with N >= 1, got shape {tuple(advantages.shape)}")
    rows = advantages.detach().reshape(advantages.shape[0], -1).to("cpu", torch.float64).numpy()
    if not np.all(np.isfinite(rows)):
        raise ValueError("advantages contain NaN or inf; min-norm weights are undefined")
    # Exact duplicate rows (incl. several all-zero rows) are solved once and share their weight
    # evenly, so ties between identical rewards never depend on N or on the row order.
    _, first, inverse = np.unique(rows, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)  # unique rows in order of first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    group_of_row = rank[inverse.reshape(-1)]
    unique_weights = _solve_unique(rows[first[order]])
    weights = unique_weights[group_of_row] / np.bincount(group_of_row)[group_of_row]
    gram = rows @ rows.T
    out_dtype = advantages.dtype if advantages.is_floating_point() else torch.float64
    return MinNormResult(
        weights=torch.as_tensor(weights, dtype=out_dtype, device=advantages.device),
        objective=float(np.sum((weights @ rows) ** 2)),
        duality_gap=duality_gap(gram, weights),
    )


def min_norm_weights(advantages: torch.Tensor) -> torch.Tensor:
    """c in the simplex minimising ||sum_i c_i A_i||^2 (report eq. 4); advantages [N, B] -> [N].

    Exact (see `min_norm_solution` for the method and the optimality certificate)."""
    return min_norm_solution(advantages).weights


def component_weights(
    advantages: torch.Tensor,
    mode: str,
    reward_weights: torch.Tensor | Sequence[float] | None = None,
) -> torch.Tensor:
    """The c_i of eq. (5) [N] for N per-reward advantages [N, ...] under reward weights w [N]
    (static, or the Self-Paced curriculum's, report §3.4; default ones).

    mode="advantage_sum": c = w, the plain (weighted) advantage summation the report (§3.5)
      compares against.
    mode="min_norm": c_i ∝ w_i·m_i on the simplex, m solving eq. (4) over the rewards the weights
      keep (w_i > 0) that carry a signal (A_i ≠ 0). A reward at weight 0 thus gets c_i = 0 and
      does not shape the others' balance; equal weights give c = m exactly. An all-zero A_i
      (every group saturated) has no direction to balance: left in, it alone is eq. 4's optimum
      (‖0‖ = 0) and would take all the weight, silencing every other reward.
    Eq. (4) is scale-sensitive (orthogonal rewards get c_i ∝ 1/‖A_i‖²), so pass the rewards' own
    eq. (1) advantages: solved on BPGO's rescaled ones it would undo CRT's compression (a reward
    compressed to half its norm would get four times the weight).
    A "weighted_sum" of REWARDS is not a mode here: it happens before group normalisation
    (weighted_reward_sum, then group_advantages) and leaves one objective, c = [1].
    """
    weights = _as_weights(reward_weights, advantages)
    if mode == "advantage_sum":
        return weights
    if mode == "weighted_sum":
        raise ValueError(
            "mode='weighted_sum' combines REWARDS before group normalisation: call "
            "weighted_reward_sum(rewards, weights) and then group_advantages on the result; "
            f"component_weights accepts modes {_MODES}"
        )
    if mode != "min_norm":
        raise ValueError(f"unknown joint-reward mode {mode!r}; accepted modes are {_MODES}")
    if bool((weights < 0).any()) or not weights.sum() > 0:
        raise ValueError(f"min_norm needs reward weights >= 0 with a positive sum, got {weights.tolist()}")
    rows = advantages.reshape(advantages.shape[0], -1)
    active = (weights > 0) & (rows != 0).any(dim=1)
    if not bool(active.any()):  # no reward carries a signal: the weights alone (the loss is 0 anyway)
        return weights / weights.sum()
    balanced = torch.zeros_like(weights)
    balanced[active] = min_norm_weights(rows[active]).to(weights.dtype)  # report eq. (4)
    weighted = weights * balanced
    return weighted / weighted.sum()


def weighted_reward_sum(
    rewards: torch.Tensor, weights: torch.Tensor | Sequence[float]
) -> torch.Tensor:
    """sum_i w_i r_i over N rewards [N, ...] -> [...]: the scalarised reward baseline.

    Apply to RAW rewards, then group-normalise the result (report eq. 1); this is the classic
    weighted-sum scalarisation, not an advantage-level combination.
    """
    return torch.tensordot(_as_weights(weights, rewards), rewards, dims=1)


def _as_weights(weights, stacked: torch.Tensor) -> torch.Tensor:
    n = stacked.shape[0]
    if weights is None:
        return torch.ones(n, dtype=stacked.dtype, device=stacked.device)
    weights = torch.as_tensor(weights, dtype=stacked.dtype, device=stacked.device)
    if weights.shape != (n,):
        raise ValueError(f"reward_weights must have shape ({n},) (one per reward), got {tuple(weights.shape)}")
    return weights
