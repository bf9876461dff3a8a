"""BPGO: Bayesian Prior-Guided Optimization (report §3.3).

Reward models are confident on some prompts and noisy on others (many-to-many T2V/I2V ambiguity),
and plain GRPO (report eq. 1) trusts every prompt group equally. BPGO keeps a per-prompt prior
N(mu_p, sigma_p^2) of the REFERENCE policy's rewards (the SFT model, report §2.5) as a "trust
anchor" and uses it twice:

1. Reliability-Adaptive Scaling (RAS, inter-group): a group whose rewards sit far from the prior
   or spread more widely than the batch's other prompts is ambiguous and gets a small weight; a
   clear, low-variance group a large one.
2. Contrastive Reward Transformation (CRT, intra-group): rewards are read in prior units
   z = (r - mu_p) / sigma_p; confident winners (z > margin) are stretched, ambiguous samples
   (|z| <= margin) compressed, before the group-relative advantage is formed.

The prior is the trust anchor: the reference policy's rewards on each prompt, pooled over every
reference group sampled before training, and then held fixed ("pooled" once, never updated);
"ema" and "bayes" let it follow the policy during training instead. It is a prior over the
VECTOR of reward components, so one prior serves every joint-reward mode: component i reads its
own statistics, and a weighted mix of rewards (report §3.5, with weights the Self-Paced
curriculum may change, §3.4) reads the exact mean and variance of the mix in force now.
"""

from __future__ import annotations

from typing import Any, Iterable, NamedTuple

import torch

from algorithms.grpo import group_advantages

_RULES = ("pooled", "ema", "bayes")


class PriorStats(NamedTuple):
    mu: torch.Tensor  # [P] prior mean reward of each prompt
    sigma: torch.Tensor  # [P] prior (predictive) reward std of each prompt


class BPGOAdvantages(NamedTuple):
    advantages: torch.Tensor  # [P, G]
    group_weights: torch.Tensor  # [P]; the loss of group p is multiplied by group_weights[p]


class _Entry(NamedTuple):
    count: int  # rewards seen
    mu: torch.Tensor  # [N] mean reward vector
    cov: torch.Tensor  # [N, N] within-prompt covariance of one reward vector
    mean_cov: torch.Tensor  # [N, N] posterior covariance of mu (0 except under "bayes")


# --------------------------------------------------------------------------------------------
# The prior
# --------------------------------------------------------------------------------------------


class RewardPrior:
    """Per-prompt Gaussian prior N(mu_p, cov_p) of reference-policy reward vectors (N components),
    with a global entry as the fallback for unseen prompts.

    get(prompts, weights=w) returns the prior of the mix w·r: mean w·mu_p and std
    sqrt(wᵀ(cov_p + mean_cov_p)w), the predictive spread of one new reward. Both are exact for
    any w, so w = e_i reads component i and a re-weighted mix reads its own anchor.

    Update rules, for a group of G reward vectors with mean rbar and population covariance S:
      "pooled": every sample counts once: n' = n + G, mu' = (n mu + G rbar) / n', and cov' the
                population covariance of all n' samples, (n cov + G S)/n' + n G/n'² (mu − rbar)(mu − rbar)ᵀ.
                Independent of the order and grouping of the samples.
      "ema":    first sight as "pooled"; then mu <- m mu + (1-m) rbar, cov <- m cov + (1-m) S
                (m = momentum): tracks a moving policy.
      "bayes":  conjugate Normal update of mu with known covariance. The "known" covariance is the
                prompt's pooled within-group covariance (n cov + G S) / (n + G), eigenvalues floored
                at sigma_min²; the prior on mu is N(mu, mean_cov), for an unseen prompt the fallback's
                predictive distribution. Posterior:
                    mean_cov'⁻¹ = mean_cov⁻¹ + G cov⁻¹,   mu' = mean_cov' (mean_cov⁻¹ mu + G cov⁻¹ rbar).
    The global entry is updated with the same rule from the whole batch's rewards (mean and TOTAL
    covariance, which includes between-prompt spread); an empty prior reads
    N(default_mu, default_sigma²) per component, independent. Prompt ids are keyed by str(id), so
    ints and strings survive a JSON round trip.
    """

    def __init__(self, default_mu: float = 0.0, default_sigma: float = 1.0, sigma_min: float = 1e-3):
        if default_sigma <= 0 or sigma_min <= 0:
            raise ValueError(f"default_sigma and sigma_min must be > 0, got {default_sigma}, {sigma_min}")
        self.default_mu = float(default_mu)
        self.default_sigma = float(default_sigma)
        self.sigma_min = float(sigma_min)
        self.num_components: int | None = None  # fixed by the first update
        self._prompts: dict[str, _Entry] = {}
        self._global: _Entry | None = None

    def __len__(self) -> int:
        return len(self._prompts)

    def __contains__(self, prompt_id: Any) -> bool:
        return str(prompt_id) in self._prompts

    def update(
        self,
        prompt_ids: Iterable[Any] | torch.Tensor,
        group_rewards: torch.Tensor,
        rule: str = "pooled",
        momentum: float = 0.9,
    ) -> None:
        """Fold one batch of groups into the prior: group_rewards [N, P, G] (or [P, G] for N = 1),
        one prompt id per group."""
        if rule not in _RULES:
            raise ValueError(f"unknown prior update rule {rule!r}; accepted rules are {_RULES}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        keys = _keys(prompt_ids)
        rewards = group_rewards.detach().to("cpu", torch.float64)
        rewards = rewards[None] if rewards.dim() == 2 else rewards
        if rewards.dim() != 3 or rewards.shape[1] != len(keys):
            raise ValueError(
                f"group_rewards must be [N, P, G] or [P, G] with P = len(prompt_ids) = {len(keys)}, "
                f"got {tuple(group_rewards.shape)}"
            )
        n = rewards.shape[0]
        if self.num_components not in (None, n):
            raise ValueError(f"this prior holds {self.num_components} reward components, got rewards for {n}")
        self.num_components = n
        fallback = self._fallback(n)
        for p, key in enumerate(keys):
            self._prompts[key] = self._updated(self._prompts.get(key), rewards[:, p], rule, momentum, fallback)
        self._global = self._updated(self._global, rewards.flatten(1), rule, momentum, self._default(n))

    def get(
        self,
        prompt_ids: Iterable[Any] | torch.Tensor,
        weights: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> PriorStats:
        """(mu [P], sigma [P]) of the reward mix weights·r (weights [N]; None means N = 1);
        unseen prompts get the global entry, or the defaults if the prior is empty."""
        if weights is None:
            if (self.num_components or 1) != 1:
                raise ValueError(f"this prior holds {self.num_components} reward components: pass weights")
            weights = torch.ones(1)
        w = torch.as_tensor(weights, dtype=torch.float64).cpu().reshape(-1)
        if self.num_components not in (None, len(w)):
            raise ValueError(f"weights of shape ({len(w)},) for a prior of {self.num_components} reward components")
        fallback = self._fallback(len(w))
        entries = [self._prompts.get(key, fallback) for key in _keys(prompt_ids)]
        mu = torch.tensor([float(e.mu @ w) for e in entries], dtype=torch.float64)
        var = torch.tensor([float(w @ (e.cov + e.mean_cov) @ w) for e in entries], dtype=torch.float64)
        sigma = var.clamp_min(0.0).sqrt().clamp_min(self.sigma_min)
        return PriorStats(mu=mu.to(dtype), sigma=sigma.to(dtype))

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable snapshot (plain floats, ints and str keys) for checkpoints."""
        return {
            "default_mu": self.default_mu,
            "default_sigma": self.default_sigma,
            "sigma_min": self.sigma_min,
            "num_components": self.num_components,
            "prompts": {key: _entry_state(entry) for key, entry in self._prompts.items()},
            "global": None if self._global is None else _entry_state(self._global),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.default_mu = float(state["default_mu"])
        self.default_sigma = float(state["default_sigma"])
        self.sigma_min = float(state["sigma_min"])
        self.num_components = state["num_components"]
        self._prompts = {str(k): _entry_from_state(v) for k, v in state["prompts"].items()}
        self._global = None if state["global"] is None else _entry_from_state(state["global"])

    # -- internals ------------------------------------------------------------------------------

    def _default(self, n: int) -> _Entry:
        zeros = torch.zeros(n, n, dtype=torch.float64)
        return _Entry(0, torch.full((n,), self.default_mu, dtype=torch.float64),
                      self.default_sigma**2 * torch.eye(n, dtype=torch.float64), zeros)

    def _fallback(self, n: int) -> _Entry:
        return self._global if self._global is not None else self._default(n)

    def _updated(self, entry: _Entry | None, rewards: torch.Tensor, rule: str, momentum: float, fallback: _Entry) -> _Entry:
        """`rewards` [N, G]: one group (or the whole batch, for the global entry)."""
        g = rewards.shape[1]
        rbar = rewards.mean(dim=1)
        centred = rewards - rbar[:, None]
        scatter = centred @ centred.T / g  # population covariance S
        zeros = torch.zeros_like(scatter)
        if rule == "bayes":
            floor = self.sigma_min**2
            if entry is None:  # prior on mu: the fallback's predictive distribution
                entry = _Entry(0, fallback.mu, zeros, _floor_eigenvalues(fallback.cov + fallback.mean_cov, floor))
            n = entry.count
            cov = _floor_eigenvalues((n * entry.cov + g * scatter) / (n + g), floor)
            prior_precision = torch.linalg.inv(entry.mean_cov)
            data_precision = g * torch.linalg.inv(cov)
            mean_cov = torch.linalg.inv(prior_precision + data_precision)
            mu = mean_cov @ (prior_precision @ entry.mu + data_precision @ rbar)
            return _Entry(n + g, mu, cov, 0.5 * (mean_cov + mean_cov.T))
        if entry is None:
            return _Entry(g, rbar, scatter, zeros)
        if rule == "ema":
            return _Entry(entry.count + g, momentum * entry.mu + (1.0 - momentum) * rbar,
                          momentum * entry.cov + (1.0 - momentum) * scatter, zeros)
        n = entry.count  # "pooled": exact moments of all n + g samples
        total = n + g
        shift = (entry.mu - rbar)[:, None]
        cov = (n * entry.cov + g * scatter) / total + (n * g / total**2) * (shift @ shift.T)
        return _Entry(total, (n * entry.mu + g * rbar) / total, cov, zeros)


def _floor_eigenvalues(matrix: torch.Tensor, floor: float) -> torch.Tensor:
    """The symmetric matrix with its eigenvalues raised to at least `floor` (invertible)."""
    values, vectors = torch.linalg.eigh(0.5 * (matrix + matrix.T))
    return (vectors * values.clamp_min(floor)) @ vectors.T


def _keys(prompt_ids) -> list[str]:
    if isinstance(prompt_ids, torch.Tensor):
        prompt_ids = prompt_ids.tolist()
    return [str(p) for p in prompt_ids]


def _entry_state(entry: _Entry) -> dict[str, Any]:
    return {"count": entry.count, "mu": entry.mu.tolist(), "cov": entry.cov.tolist(), "mean_cov": entry.mean_cov.tolist()}


def _entry_from_state(raw: dict[str, Any]) -> _Entry:
    mu, cov, mean_cov = (torch.tensor(raw[key], dtype=torch.float64) for key in ("mu", "cov", "mean_cov"))
    return _Entry(int(raw["count"]), mu, cov, mean_cov)


# --------------------------------------------------------------------------------------------
# RAS: inter-group trust allocation
# --------------------------------------------------------------------------------------------


def reliability_weights(
    group_rewards: torch.Tensor,
    prior_mu: torch.Tensor,
    prior_sigma: torch.Tensor,
    alpha: float = 1.0,
    gamma: float = 4.0,
    w_min: float = 0.2,
    w_max: float = 3.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Reliability-Adaptive Scaling (report §3.3, mechanism 1): one trust weight per group [P].

    With group mean m_p, population variance s_p^2 and prior (mu_p, sigma_p):
        d_p   = (m_p - mu_p) / sigma_p               deviation from the prior, in prior stds
        v_p   = (s_p^2 + sigma_p^2) / 2              the prompt's reward variance: this group
                                                     pooled with the reference prior's
        raw_p = exp(-alpha d_p^2 / 2) / (1 + gamma v_p / mean_q v_q)
    so raw_p falls as the group drifts from its prior (a Gaussian likelihood of the group mean
    under the prior) and as the prompt's rewards spread more widely than the batch's typical
    prompt (ambiguous, noisy supervision: the inverse-variance weighting of a noisy estimate).
    The variance is compared ACROSS the batch, not to the prior's own: when the prior is read
    from the same critic on the same prompt (the usual case), s_p / sigma_p is ~1 for noisy and
    clean prompts alike and cannot tell them apart (measured on the toy world: trust 0.99 vs
    1.01 on noisy vs clean prompts), while v_p keeps the noise in absolute units. A wider prior
    thus both excuses a deviation (d_p shrinks) and lowers trust (v_p grows). gamma = 4: a prompt
    at the batch's mean variance gets 1/5 of a noiseless prompt's raw trust (gamma = 1 left only
    a 2x range between clean and pure-noise prompts).
    Weights are w_p = clip(tau raw_p, w_min, w_max) with tau chosen exactly so mean_p w_p = 1:
    without active clipping this is raw / mean(raw); with clipping it is "normalise, clip,
    renormalise" iterated to its fixed point, so the batch's average step size is unchanged and
    the bounds still hold (requires w_min <= 1 <= w_max). Order of the raw scores is preserved.
    Adding a constant to rewards and prior means changes nothing; scaling both scales nothing.
    """
    if not 0.0 <= w_min <= 1.0 <= w_max:
        raise ValueError(f"need 0 <= w_min <= 1 <= w_max, got w_min={w_min}, w_max={w_max}")
    sigma = prior_sigma.to(group_rewards.dtype).clamp_min(eps)
    deviation = (group_rewards.mean(dim=-1) - prior_mu) / sigma
    variance = 0.5 * (group_rewards.var(dim=-1, correction=0) + sigma**2)
    relative_variance = variance / variance.mean().clamp_min(eps**2)
    log_raw = -0.5 * alpha * deviation**2 - torch.log1p(gamma * relative_variance)
    # shift so the largest raw score is 1 (the scale is normalised away) and nothing underflows
    raw = torch.exp((log_raw - log_raw.max()).clamp_min(-700.0)).to(torch.float64)
    return _mean_one_clipped(raw, w_min, w_max).to(group_rewards.dtype)


def _mean_one_clipped(raw: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """w = clip(tau raw, lo, hi) with mean(w) = 1, solved exactly: f(tau) = mean(clip(tau raw))
    is piecewise linear and non-decreasing with breakpoints lo/raw_i and hi/raw_i."""
    if raw.numel() == 0:
        return raw
    w = raw / raw.mean()
    if bool(((w >= lo) & (w <= hi)).all()):
        return w
    breaks = torch.cat([lo / raw, hi / raw]).unique()  # sorted; hi = inf gives inf, dropped below
    breaks = breaks[torch.isfinite(breaks)]
    values = (breaks[:, None] * raw[None, :]).clamp(lo, hi).mean(dim=1)
    k = int(torch.searchsorted(values, values.new_ones(1)).item())
    if k >= len(breaks):  # mean can only reach 1 past the last breakpoint: all unclipped above lo
        low_tau, low_val = breaks[-1], values[-1]
        slope = raw[raw * breaks[-1] < hi].sum() / raw.numel()
        tau = low_tau + (1.0 - low_val) / slope
    elif k == 0 or values[k] == 1.0:
        tau = breaks[k]
    else:  # f is linear on [breaks[k-1], breaks[k]]
        t0, t1, v0, v1 = breaks[k - 1], breaks[k], values[k - 1], values[k]
        tau = t0 + (1.0 - v0) * (t1 - t0) / (v1 - v0)
    return (tau * raw).clamp(lo, hi)


# --------------------------------------------------------------------------------------------
# CRT: intra-group prior-anchored renormalisation
# --------------------------------------------------------------------------------------------


def contrastive_advantages(
    group_rewards: torch.Tensor,
    prior_mu: torch.Tensor,
    prior_sigma: torch.Tensor,
    margin: float = 1.0,
    stretch: float = 1.5,
    compress: float = 0.5,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Contrastive Reward Transformation (report §3.3, mechanism 2): advantages [P, G].

    In prior units z = (r - mu_p) / sigma_p apply the continuous piecewise-linear map
        T(z) = compress * z                              |z| <= margin   (ambiguous: compressed)
               compress * margin + stretch (z - margin)   z >  margin    (confident win: stretched)
               -compress * margin + (z + margin)          z < -margin    (confident loss: slope 1)
    map back r~ = sigma_p T(z), and form the group-relative advantage
        A = (r~ - mean_G r~) / (std_G(r) + eps)
    dividing by the ORIGINAL group std: re-standardising by std(r~) would undo a uniform
    compression (an all-ambiguous group would come out identical to plain GRPO). Hence an
    all-ambiguous group gets compress x the plain advantages and an all-winning group
    stretch x; mixed groups separate their confident winners. All slopes are >= 0 and the
    last step is a positive affine map per group, so A is non-decreasing in r within a group;
    shifting r and mu_p by the same constant leaves A unchanged. stretch = compress = 1 is plain GRPO.
    """
    if margin < 0 or stretch < 0 or compress < 0:
        raise ValueError(f"margin, stretch, compress must be >= 0, got {margin}, {stretch}, {compress}")
    sigma = prior_sigma.to(group_rewards.dtype).clamp_min(eps)[:, None]
    z = (group_rewards - prior_mu[:, None]) / sigma
    inner = compress * z.clamp(-margin, margin)
    above = stretch * (z - margin).clamp_min(0.0)
    below = (z + margin).clamp_max(0.0)
    transformed = sigma * (inner + above + below)
    centred = transformed - transformed.mean(dim=-1, keepdim=True)
    return centred / (group_rewards.std(dim=-1, keepdim=True, correction=0) + eps)


# --------------------------------------------------------------------------------------------
# Together
# --------------------------------------------------------------------------------------------


def bpgo_advantages(
    group_rewards: torch.Tensor,
    prior_mu: torch.Tensor,
    prior_sigma: torch.Tensor,
    use_ras: bool,
    use_crt: bool,
    *,
    eps: float = 1e-6,
    alpha: float = 1.0,
    gamma: float = 4.0,
    w_min: float = 0.2,
    w_max: float = 3.0,
    margin: float = 1.0,
    stretch: float = 1.5,
    compress: float = 0.5,
) -> BPGOAdvantages:
    """BPGO advantages [P, G] and group weights [P] (report §3.3).

    use_crt=False: plain GRPO advantages (report eq. 1). use_ras=False: weights of ones.
    With both off this is exactly GRPO. The caller multiplies group p's surrogate terms by
    group_weights[p] (equivalently advantages * group_weights[:, None]).
    """
    if use_crt:
        advantages = contrastive_advantages(
            group_rewards, prior_mu, prior_sigma, margin=margin, stretch=stretch, compress=compress, eps=eps
        )
    else:
        advantages = group_advantages(group_rewards, eps=eps)
    if use_ras:
        weights = reliability_weights(
            group_rewards, prior_mu, prior_sigma, alpha=alpha, gamma=gamma, w_min=w_min, w_max=w_max, eps=eps
        )
    else:
        weights = torch.ones(group_rewards.shape[0], dtype=group_rewards.dtype, device=group_rewards.device)
    return BPGOAdvantages(advantages=advantages, group_weights=weights)


__all__ = [
    "BPGOAdvantages",
    "PriorStats",
    "RewardPrior",
    "bpgo_advantages",
    "contrastive_advantages",
    "group_advantages",
    "reliability_weights",
]
