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

The prior is fed with the reference policy's rewards: e.g. a pass of pi_ref over the prompt set
(or the step-0 rollouts, where the policy still equals pi_ref) with rule="frozen", or a slow
"ema"/"bayes" track when the anchor should follow training.
"""

from __future__ import annotations

from typing import Any, Iterable, NamedTuple

import torch

from algorithms.grpo import group_advantages

_RULES = ("ema", "bayes", "frozen")


class PriorStats(NamedTuple):
    mu: torch.Tensor  # [P] prior mean reward of each prompt
    sigma: torch.Tensor  # [P] prior (predictive) reward std of each prompt


class BPGOAdvantages(NamedTuple):
    advantages: torch.Tensor  # [P, G]
    group_weights: torch.Tensor  # [P]; the loss of group p is multiplied by group_weights[p]


# --------------------------------------------------------------------------------------------
# The prior
# --------------------------------------------------------------------------------------------


class RewardPrior:
    """Per-prompt prior N(mu_p, sigma_p^2) of reference-policy rewards, with a global fallback.

    Each entry holds mu (mean reward), var (within-prompt reward variance), mean_var (posterior
    variance of mu; 0 except under "bayes") and count (rewards seen). get() returns
    sigma = sqrt(var + mean_var): the predictive spread of one new reward for that prompt.

    Update rules, for a group with G rewards, mean rbar and population variance s^2:
      "ema":    first sight: mu = rbar, var = s^2. Then mu <- m mu + (1-m) rbar,
                var <- m var + (1-m) s^2 (m = momentum): tracks a moving policy.
      "bayes":  conjugate Normal update of mu with known variance. The "known" variance is the
                prompt's pooled within-group variance var = (n var + G s^2) / (n + G), a plug-in
                estimate; the prior on mu is N(mu, mean_var), for an unseen prompt the global
                entry (or N(default_mu, default_sigma^2)). Posterior:
                    1/mean_var' = 1/mean_var + G/var,   mu' = mean_var' (mu/mean_var + G rbar/var).
      "frozen": first sight initialises as "ema" does; afterwards the entry never changes, so the
                anchor stays at the reference statistics it was first given.
    The global entry (the fallback for unseen prompts) is updated with the same rule from the
    whole batch's rewards (mean and TOTAL variance, which includes between-prompt spread).
    Prompt ids are keyed by str(id), so ints and strings survive a JSON round trip.
    """

    def __init__(self, default_mu: float = 0.0, default_sigma: float = 1.0, sigma_min: float = 1e-3):
        if default_sigma <= 0 or sigma_min <= 0:
            raise ValueError(f"default_sigma and sigma_min must be > 0, got {default_sigma}, {sigma_min}")
        self.default_mu = float(default_mu)
        self.default_sigma = float(default_sigma)
        self.sigma_min = float(sigma_min)
        self._prompts: dict[str, dict[str, float]] = {}
        self._global: dict[str, float] | None = None

    def __len__(self) -> int:
        return len(self._prompts)

    def __contains__(self, prompt_id: Any) -> bool:
        return str(prompt_id) in self._prompts

    def update(
        self,
        prompt_ids: Iterable[Any] | torch.Tensor,
        group_rewards: torch.Tensor,
        rule: str = "ema",
        momentum: float = 0.9,
    ) -> None:
        """Fold one batch of groups (group_rewards [P, G], one prompt id per row) into the prior."""
        if rule not in _RULES:
            raise ValueError(f"unknown prior update rule {rule!r}; accepted rules are {_RULES}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        keys = _keys(prompt_ids)
        rewards = group_rewards.detach().to("cpu", torch.float64)
        if rewards.dim() != 2 or rewards.shape[0] != len(keys):
            raise ValueError(
                f"group_rewards must be [P, G] with P = len(prompt_ids) = {len(keys)}, got {tuple(rewards.shape)}"
            )
        fallback = self._global_or_default()
        for key, row in zip(keys, rewards):
            self._prompts[key] = self._updated(self._prompts.get(key), row, rule, momentum, fallback)
        hyper = {"mu": self.default_mu, "var": self.default_sigma**2, "mean_var": 0.0, "count": 0}
        self._global = self._updated(self._global, rewards.reshape(-1), rule, momentum, hyper)

    def get(self, prompt_ids: Iterable[Any] | torch.Tensor, dtype: torch.dtype = torch.float32) -> PriorStats:
        """(mu [P], sigma [P]); unseen prompts get the global entry, or the defaults if empty."""
        fallback = self._global_or_default()
        entries = [self._prompts.get(key, fallback) for key in _keys(prompt_ids)]
        mu = torch.tensor([e["mu"] for e in entries], dtype=torch.float64)
        var = torch.tensor([e["var"] + e["mean_var"] for e in entries], dtype=torch.float64)
        sigma = var.sqrt().clamp_min(self.sigma_min)
        return PriorStats(mu=mu.to(dtype), sigma=sigma.to(dtype))

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable snapshot (plain floats, ints and str keys) for checkpoints."""
        return {
            "default_mu": self.default_mu,
            "default_sigma": self.default_sigma,
            "sigma_min": self.sigma_min,
            "prompts": {key: dict(entry) for key, entry in self._prompts.items()},
            "global": None if self._global is None else dict(self._global),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.default_mu = float(state["default_mu"])
        self.default_sigma = float(state["default_sigma"])
        self.sigma_min = float(state["sigma_min"])
        self._prompts = {str(k): _entry(v) for k, v in state["prompts"].items()}
        self._global = None if state["global"] is None else _entry(state["global"])

    # -- internals ------------------------------------------------------------------------------

    def _global_or_default(self) -> dict[str, float]:
        if self._global is not None:
            return self._global
        return {"mu": self.default_mu, "var": self.default_sigma**2, "mean_var": 0.0, "count": 0}

    def _updated(self, entry, rewards: torch.Tensor, rule: str, momentum: float, fallback) -> dict:
        g = rewards.numel()
        rbar = float(rewards.mean())
        s2 = float(rewards.var(correction=0)) if g > 1 else 0.0
        if rule == "bayes":
            var_floor = self.sigma_min**2
            if entry is None:  # prior on mu: the fallback's predictive distribution
                entry = {"mu": fallback["mu"], "var": 0.0,
                         "mean_var": max(fallback["var"] + fallback["mean_var"], var_floor), "count": 0}
            n = entry["count"]
            var = max((n * entry["var"] + g * s2) / (n + g), var_floor)  # pooled "known" variance
            precision = 1.0 / entry["mean_var"] + g / var
            mu = (entry["mu"] / entry["mean_var"] + g * rbar / var) / precision
            return {"mu": mu, "var": var, "mean_var": 1.0 / precision, "count": n + g}
        if entry is None:  # "ema" and "frozen" start from the first group they see
            return {"mu": rbar, "var": s2, "mean_var": 0.0, "count": g}
        if rule == "frozen":
            return entry
        return {
            "mu": momentum * entry["mu"] + (1.0 - momentum) * rbar,
            "var": momentum * entry["var"] + (1.0 - momentum) * s2,
            "mean_var": 0.0,
            "count": entry["count"] + g,
        }


def _keys(prompt_ids) -> list[str]:
    if isinstance(prompt_ids, torch.Tensor):
        prompt_ids = prompt_ids.tolist()
    return [str(p) for p in prompt_ids]


def _entry(raw: dict[str, Any]) -> dict[str, float]:
    return {"mu": float(raw["mu"]), "var": float(raw["var"]), "mean_var": float(raw["mean_var"]),
            "count": int(raw["count"])}


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
