"""Diffusion-DPO for flow-matching video policies (report ch. 4, §6.2).

Report eq. (6) needs log π_θ(y|x)/π_ref(y|x), which a diffusion model does not give. Diffusion-DPO
(Wallace et al., 2024) replaces β·log π_θ/π_ref of a clip by −½β·(err_θ − err_ref), where err is the
per-sample denoising error at ONE shared (σ, ε) draw. In the flow-matching convention
x_σ = (1−σ)·x0 + σ·ε, the error is m = mean((v_θ(x_σ, σ) − (ε − x0))²) over non-batch dims, and

    inside = −½β·[(err_w − ref_err_w) − (err_l − ref_err_l)],   L = mean_B −log σ(inside).

`inside` is the implicit reward margin r(y_w) − r(y_l) with r(y) = −½β·(err(y) − ref_err(y)).

Memory (report §6.2). Per sample, with s = σ(−inside) and batch size B,

    ∂L/∂err_w = +½β·s / B,        ∂L/∂err_l = −½β·s / B,

which is eq. (12) with β·Â = inside and log π = −½·err: η = β·σ(−βÂ) is a constant once the
margin is known, so J_w = (½η/B)·∇err_w and J_l = −(½η/B)·∇err_l (eq. 13) can be back-propagated
in separate backward calls. `dpo_step` offers three schedules with identical gradients:

- standard   — both branches' graphs, one backward of L (the O(L_w + L_l) baseline);
- decoupled  — report §6.2: both forwards with grad, η from detached values, then the winner's and
               the loser's backward separately (two graph tasks). Both forwards' saved activations
               are alive together, so only backward-time buffers shrink;
- sequential — never holds both graphs: η from a no-grad pass over both branches, then winner
               forward → backward → freed, then loser. Peak is one branch's graph; the price is
               one extra policy forward per branch. Exact only for a deterministic forward (no
               dropout; Wan's and our LoRA's dropout are 0), as η comes from the no-grad pass.

The on-policy hard-negative selection (report §4.2 item 1) is here too, as pure math on scores.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Callable, ContextManager, Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F

VelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Mode = Literal["standard", "decoupled", "sequential"]
MODES: tuple[str, ...] = get_args(Mode)


# -- the loss ----------------------------------------------------------------------------------
class DPOTerms(NamedTuple):
    """One step's loss and what to log; everything but `loss` is detached (batch means)."""

    loss: torch.Tensor
    implicit_accuracy: torch.Tensor  # fraction of pairs with inside > 0
    reward_margin: torch.Tensor  # mean inside = r(y_w) − r(y_l)
    winner_reward: torch.Tensor  # mean −½β·(err_w − ref_err_w)
    loser_reward: torch.Tensor  # mean −½β·(err_l − ref_err_l)
    err_w: torch.Tensor
    err_l: torch.Tensor
    ref_err_w: torch.Tensor
    ref_err_l: torch.Tensor


def implicit_rewards(err: torch.Tensor, ref_err: torch.Tensor, beta: float) -> torch.Tensor:
    """r(y) = −½β·(err − ref_err) per sample: Diffusion-DPO's stand-in for β·log π_θ/π_ref (eq. 6)."""
    return -0.5 * beta * (err - ref_err)


def dpo_terms(err_w, err_l, ref_err_w, ref_err_l, beta: float) -> DPOTerms:
    """The Diffusion-DPO loss of report eq. (6) from per-sample errors [B], with logging terms."""
    reward_w = implicit_rewards(err_w, ref_err_w, beta)
    reward_l = implicit_rewards(err_l, ref_err_l, beta)
    inside = reward_w - reward_l
    loss = -F.logsigmoid(inside).mean()  # logsigmoid: no overflow at β in the thousands
    return DPOTerms(
        loss=loss,
        implicit_accuracy=(inside > 0).float().mean().detach(),
        reward_margin=inside.mean().detach(),
        winner_reward=reward_w.mean().detach(),
        loser_reward=reward_l.mean().detach(),
        err_w=err_w.mean().detach(),
        err_l=err_l.mean().detach(),
        ref_err_w=ref_err_w.mean().detach(),
        ref_err_l=ref_err_l.mean().detach(),
    )


def diffusion_dpo_loss(err_w, err_l, ref_err_w, ref_err_l, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, implicit_accuracy): inside = −½β[(err_w − ref_err_w) − (err_l − ref_err_l)], L = mean −log σ(inside)."""
    terms = dpo_terms(err_w, err_l, ref_err_w, ref_err_l, beta)
    return terms.loss, terms.implicit_accuracy


def error_weights(err_w, err_l, ref_err_w, ref_err_l, beta: float, loss_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂L/∂err_w, ∂L/∂err_l)·loss_scale per sample, [B] each, no gradient: ±½β·σ(−inside)/B.

    Report eq. (12): η = β·σ(−βÂ) with βÂ = inside, split as ½η per unit of error.
    """
    with torch.no_grad():
        inside = implicit_rewards(err_w, ref_err_w, beta) - implicit_rewards(err_l, ref_err_l, beta)
        weight = (0.5 * beta * loss_scale / inside.numel()) * torch.sigmoid(-inside)
    return weight, -weight


# -- the batch ---------------------------------------------------------------------------------
class PreferenceBatch(NamedTuple):
    """Clean latents of B pairs and the ONE (σ, ε) draw each pair's two clips are noised with.

    Sharing σ and ε is what makes err_w − err_l compare the clips rather than two noise draws
    (Diffusion-DPO and Flow-DPO do this); where frame counts differ, the shorter clip's noise is
    the longer one's leading frames.
    """

    winner: torch.Tensor  # [B, C, T_w, H, W]
    loser: torch.Tensor  # [B, C, T_l, H, W]
    text: torch.Tensor  # [B, L, D]
    sigma: torch.Tensor  # [B]
    winner_noise: torch.Tensor  # winner.shape
    loser_noise: torch.Tensor  # loser.shape; a view of the same draw as winner_noise


def make_preference_batch(
    winner: torch.Tensor, loser: torch.Tensor, text: torch.Tensor, generator: torch.Generator, shift: float = 1.0
) -> PreferenceBatch:
    """Draw one σ and one ε per pair; σ = s·u/(1+(s−1)·u), u ~ U(0,1), as flow-matching training does.

    Draws happen on the generator's device: a CPU generator gives the same batch wherever the latents live.
    """
    if winner.ndim != loser.ndim or winner.shape[:2] != loser.shape[:2] or winner.shape[3:] != loser.shape[3:]:
        raise ValueError(
            f"winner and loser latents must share batch, channels, height and width (frames may differ); "
            f"got winner {tuple(winner.shape)}, loser {tuple(loser.shape)}"
        )
    if text.shape[0] != winner.shape[0]:
        raise ValueError(f"text has batch {text.shape[0]} but the latents have {winner.shape[0]}")
    u = torch.rand(winner.shape[0], generator=generator, device=generator.device)
    sigma = (shift * u / (1 + (shift - 1) * u)).to(winner.device)
    longest = winner if winner.shape[2] >= loser.shape[2] else loser
    noise = torch.randn(longest.shape, generator=generator, device=generator.device).to(winner.device, winner.dtype)
    return PreferenceBatch(
        winner, loser, text, sigma, noise[:, :, : winner.shape[2]], noise[:, :, : loser.shape[2]]
    )


def flow_matching_errors(
    velocity: VelocityFn, latents: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor, text: torch.Tensor
) -> torch.Tensor:
    """m = mean((v(x_σ, σ) − (ε − x0))²) over non-batch dims, in fp32 → [B]."""
    s = sigma.view(-1, *([1] * (latents.ndim - 1))).to(latents.dtype)
    x_t = (1 - s) * latents + s * noise
    error = velocity(x_t, sigma, text).float() - (noise - latents).float()
    return error.pow(2).mean(dim=tuple(range(1, latents.ndim)))


# -- one step: forward AND backward ------------------------------------------------------------
def dpo_step(
    policy: VelocityFn,
    reference: VelocityFn,
    batch: PreferenceBatch,
    beta: float,
    mode: Mode,
    *,
    loss_scale: float = 1.0,
    grad_sync: Callable[[], ContextManager] | None = None,
) -> DPOTerms:
    """Accumulate ∇L·loss_scale into the policy's .grad and return the (detached) terms.

    The caller owns zero_grad and optimizer.step. `policy` and `reference` are velocity callables
    (x_t, σ[B], text) → v; the reference always runs under no_grad, so it may be the policy's own
    transformer with LoRA adapters disabled.

    grad_sync: a context factory that suspends gradient all-reduce (DDP's `no_sync`). DDP decides
    in FORWARD whether the next backward all-reduces, so 'sequential' runs the winner's forward
    and backward inside it and the loser's backward reduces the summed gradient once; 'standard'
    has a single backward and does not need it. 'decoupled' refuses it: both forwards precede both
    backwards, so DDP would all-reduce during the winner's backward and miss the loser's gradient.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "decoupled" and grad_sync is not None:
        raise ValueError(
            "mode='decoupled' cannot take grad_sync: it runs both forwards before either backward, so DDP "
            "(which arms its all-reduce in forward) would reduce during the winner's backward and never the "
            "loser's; use mode='sequential' (same gradients, lower peak) or 'standard' under DDP"
        )
    w = (batch.winner, batch.winner_noise, batch.sigma, batch.text)
    l = (batch.loser, batch.loser_noise, batch.sigma, batch.text)
    with torch.no_grad():  # first, so its transient activations never stack on a held graph
        ref_err_w = flow_matching_errors(reference, *w)
        ref_err_l = flow_matching_errors(reference, *l)

    if mode == "standard":
        err_w = flow_matching_errors(policy, *w)
        err_l = flow_matching_errors(policy, *l)
        terms = dpo_terms(err_w, err_l, ref_err_w, ref_err_l, beta)
        (terms.loss * loss_scale).backward()
        return terms._replace(loss=terms.loss.detach())

    if mode == "decoupled":  # report §6.2, eqs. (12)-(13)
        err_w = flow_matching_errors(policy, *w)
        err_l = flow_matching_errors(policy, *l)
    else:  # sequential: η from a no-grad pass, then one branch's graph at a time
        with torch.no_grad():
            err_w = flow_matching_errors(policy, *w)
            err_l = flow_matching_errors(policy, *l)
    terms = dpo_terms(err_w.detach(), err_l.detach(), ref_err_w, ref_err_l, beta)
    weight_w, weight_l = error_weights(err_w, err_l, ref_err_w, ref_err_l, beta, loss_scale)
    if mode == "decoupled":
        (weight_w * err_w).sum().backward()  # J_w: its own graph task, frees the winner's graph
        (weight_l * err_l).sum().backward()  # J_l
    else:
        with (grad_sync or contextlib.nullcontext)():
            (weight_w * flow_matching_errors(policy, *w)).sum().backward()
        (weight_l * flow_matching_errors(policy, *l)).sum().backward()
    return terms


# -- on-policy hard negatives (report §4.2 item 1) ---------------------------------------------
class HardNegativeSelection(NamedTuple):
    """(winner, loser) sample indices of one group, largest quality gap first, with counts to log."""

    pairs: list[tuple[int, int]]
    gaps: torch.Tensor  # [len(pairs)] combined-quality gap of each pair
    considered: int  # G·(G−1)/2 unordered pairs
    rejected_agreement: int  # a clip follows the prompt less than agreement_threshold
    rejected_gap: int  # both follow the prompt, but their quality differs by less than gap_threshold
    kept: int  # len(pairs); the rest passed both filters but exceeded max_pairs


def ensemble_quality(scores: torch.Tensor, method: Literal["zscore", "rank"] = "zscore") -> torch.Tensor:
    """Combine K critics' scores [K, G] into one quality per sample [G].

    Critics have different scales, so each is normalised within the group before averaging:
    'zscore' (population std; a critic with no spread contributes 0) keeps how far apart samples
    are; 'rank' (average ranks for ties, scaled to [0, 1]) ignores a single critic's outliers.
    """
    scores = scores.double()
    if method == "zscore":
        std = scores.std(dim=1, keepdim=True, correction=0)
        normalised = torch.where(std > 0, (scores - scores.mean(dim=1, keepdim=True)) / std.clamp_min(1e-12), 0.0)
    elif method == "rank":
        below = (scores.unsqueeze(2) > scores.unsqueeze(1)).sum(dim=2)  # [K, G]: how many each beats
        ties = (scores.unsqueeze(2) == scores.unsqueeze(1)).sum(dim=2) - 1
        normalised = (below + 0.5 * ties).double() / max(scores.shape[1] - 1, 1)
    else:
        raise ValueError(f"method must be 'zscore' or 'rank', got {method!r}")
    return normalised.mean(dim=0)


def select_hard_negatives(
    scores: torch.Tensor,
    agreement: torch.Tensor,
    agreement_threshold: float,
    gap_threshold: float,
    max_pairs: int,
    method: Literal["zscore", "rank"] = "zscore",
) -> HardNegativeSelection:
    """Pairs of one prompt's G samples that both follow the prompt but differ in quality.

    scores: [K, G] quality scores from K critics; agreement: [G] prompt-following score. A pair is
    kept when BOTH clips have agreement ≥ agreement_threshold ("high semantic overlap") and their
    ensemble-quality gap is ≥ gap_threshold ("distinct visual quality"); the winner is the better one.
    """
    if gap_threshold <= 0:
        raise ValueError(f"gap_threshold must be > 0 (a zero gap states no preference), got {gap_threshold}")
    if scores.ndim != 2 or agreement.shape != (scores.shape[1],):
        raise ValueError(f"scores must be [K, G] and agreement [G]; got {tuple(scores.shape)} and {tuple(agreement.shape)}")
    quality = ensemble_quality(scores, method)
    candidates, rejected_agreement, rejected_gap = [], 0, 0
    for i, j in itertools.combinations(range(scores.shape[1]), 2):
        if agreement[i] < agreement_threshold or agreement[j] < agreement_threshold:
            rejected_agreement += 1
            continue
        gap = abs(quality[i] - quality[j]).item()
        if gap < gap_threshold:
            rejected_gap += 1
            continue
        candidates.append((gap, (i, j) if quality[i] > quality[j] else (j, i)))
    candidates.sort(key=lambda c: -c[0])  # stable: equal gaps keep index order
    kept = candidates[:max_pairs]
    return HardNegativeSelection(
        pairs=[pair for _, pair in kept],
        gaps=torch.tensor([gap for gap, _ in kept], dtype=torch.float64),
        considered=scores.shape[1] * (scores.shape[1] - 1) // 2,
        rejected_agreement=rejected_agreement,
        rejected_gap=rejected_gap,
        kept=len(kept),
    )
