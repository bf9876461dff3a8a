"""Diffusion-DPO (report §4.1, §6.2): the loss against its formula, the three backward schedules
against each other on the tiny Wan transformer, their graph lifetimes, gradient sync, and the
on-policy hard-negative selection (report §4.2 item 1)."""

import copy
import math
import weakref
from collections import Counter

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from algorithms.dpo import (
    MODES,
    diffusion_dpo_loss,
    dpo_step,
    dpo_terms,
    ensemble_quality,
    error_weights,
    make_preference_batch,
    select_hard_negatives,
)
from policy.wan import build_tiny_components
from tests.helpers import assert_close

torch.set_num_threads(1)


# -- the loss ----------------------------------------------------------------------------------
def test_loss_matches_the_formula_in_float64():
    g = torch.Generator().manual_seed(0)
    err_w, err_l, ref_w, ref_l = (torch.rand(6, generator=g, dtype=torch.float64) for _ in range(4))
    beta = 3.0
    loss, accuracy = diffusion_dpo_loss(err_w, err_l, ref_w, ref_l, beta)
    inside = [-0.5 * beta * ((a - c) - (b - d)) for a, b, c, d in zip(*(t.tolist() for t in (err_w, err_l, ref_w, ref_l)))]
    assert loss.item() == pytest.approx(np.mean([-math.log(1 / (1 + math.exp(-x))) for x in inside]), rel=1e-12)
    assert accuracy.item() == pytest.approx(np.mean([x > 0 for x in inside]))
    # β in the thousands: no overflow, and −log σ(x) → −x for very negative x
    huge = diffusion_dpo_loss(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]), 5000.0)[0]
    assert huge.item() == pytest.approx(2500.0)


def test_sign_conventions():
    ref_w, ref_l = torch.tensor([0.5, 0.4]), torch.tensor([0.5, 0.6])
    better = dpo_terms(ref_w - 0.1, ref_l, ref_w, ref_l, beta=10.0)  # policy denoises the winner better than ref
    assert better.reward_margin > 0 and better.implicit_accuracy == 1.0 and better.loss < math.log(2)
    assert better.winner_reward.item() == pytest.approx(0.5) and better.loser_reward == 0
    worse = dpo_terms(ref_w, ref_l - 0.1, ref_w, ref_l, beta=10.0)  # ... or the loser better
    assert worse.reward_margin < 0 and worse.implicit_accuracy == 0.0 and worse.loss > math.log(2)
    same = dpo_terms(ref_w, ref_l, ref_w, ref_l, beta=10.0)  # the policy IS the reference
    assert same.loss.item() == pytest.approx(math.log(2)) and same.implicit_accuracy == 0.0


def test_error_weights_are_the_autograd_gradient_eq_12():
    g = torch.Generator().manual_seed(1)
    err_w, err_l = (torch.rand(5, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    ref_w, ref_l = (torch.rand(5, generator=g, dtype=torch.float64) for _ in range(2))
    loss, _ = diffusion_dpo_loss(err_w, err_l, ref_w, ref_l, 7.0)
    grad_w, grad_l = torch.autograd.grad(2.5 * loss, (err_w, err_l))
    weight_w, weight_l = error_weights(err_w, err_l, ref_w, ref_l, 7.0, loss_scale=2.5)
    assert_close(weight_w, grad_w, rtol=1e-12, atol=0)
    assert_close(weight_l, grad_l, rtol=1e-12, atol=0)
    assert (weight_w > 0).all() and not weight_w.requires_grad


# -- batches -----------------------------------------------------------------------------------
def test_batch_shares_sigma_and_noise_within_a_pair():
    g = torch.Generator().manual_seed(0)
    winner, loser, text = torch.randn(3, 4, 5, 2, 2), torch.randn(3, 4, 3, 2, 2), torch.randn(3, 7, 8)
    batch = make_preference_batch(winner, loser, text, torch.Generator().manual_seed(9), shift=3.0)
    assert batch.sigma.shape == (3,)
    u = torch.rand(3, generator=torch.Generator().manual_seed(9))
    assert_close(batch.sigma, 3 * u / (1 + 2 * u))  # the shifted schedule of pretraining
    assert torch.equal(batch.loser_noise, batch.winner_noise[:, :, :3])  # shared where frames overlap
    assert not torch.equal(batch.winner_noise[0], batch.winner_noise[1])  # independent across pairs
    same = make_preference_batch(winner, winner.clone(), text, g)
    assert torch.equal(same.winner_noise, same.loser_noise)
    again = make_preference_batch(winner, loser, text, torch.Generator().manual_seed(9), shift=3.0)
    assert torch.equal(again.winner_noise, batch.winner_noise) and torch.equal(again.sigma, batch.sigma)
    with pytest.raises(ValueError, match="height and width"):
        make_preference_batch(winner, torch.randn(3, 4, 5, 4, 2), text, g)


# -- one step on the tiny Wan transformer ------------------------------------------------------
@pytest.fixture(scope="module")
def wan():
    """The tiny Wan transformer as policy and a perturbed copy as reference (the Stage-II anchor)."""
    transformer = build_tiny_components()[0]
    reference = copy.deepcopy(transformer).requires_grad_(False)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in reference.parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=g))
    return transformer, reference


def velocity(module):
    return lambda x, sigma, text: module(x, sigma * 1000, text, return_dict=False)[0]


def tiny_batch(loser_frames: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    winner = torch.randn(2, 8, 3, 8, 8, generator=g)
    loser = torch.randn(2, 8, loser_frames, 8, 8, generator=g)
    return make_preference_batch(winner, loser, torch.randn(2, 6, 32, generator=g), g, shift=3.0)


def gradients(wan, mode, batch, **kwargs):
    transformer, reference = wan
    transformer.zero_grad(set_to_none=True)
    terms = dpo_step(velocity(transformer), velocity(reference), batch, 20.0, mode, **kwargs)
    return terms, torch.cat([p.grad.flatten() for p in transformer.parameters()])


@pytest.mark.parametrize("loser_frames", [3, 2], ids=["equal", "unequal"])
def test_modes_give_the_same_gradients_and_terms(wan, loser_frames):
    transformer, reference = wan
    batch = tiny_batch(loser_frames)
    standard_terms, standard = gradients(wan, "standard", batch)
    assert standard.abs().max() > 1e-2  # a real gradient, not a vanishing one
    for mode in ("decoupled", "sequential"):
        terms, grad = gradients(wan, mode, batch)
        assert_close(grad, standard, rtol=0, atol=1e-6)
        for name, value in terms._asdict().items():
            assert_close(value, getattr(standard_terms, name), rtol=1e-6, atol=1e-7)
            assert not value.requires_grad, name


def test_modes_hold_and_free_graphs_as_they_claim(wan):
    """standard holds both branches' graphs into one backward; decoupled frees the winner's graph
    before the loser's backward starts; sequential never holds both."""
    transformer, reference = wan
    batch = tiny_batch(2)
    first_param = next(transformer.parameters())
    for mode, both_held, winner_freed_first, backward_calls in [
        ("standard", True, False, 1), ("decoupled", True, True, 2), ("sequential", False, True, 2),
    ]:
        live, seen = Counter(), {"both_held": False, "winner_freed_first": None}

        def pack(tensor, frames):
            holder = type("Saved", (), {})()
            holder.tensor = tensor
            live[frames] += 1
            weakref.finalize(holder, live.subtract, [frames])
            seen["both_held"] |= live[3] > 0 and live[2] > 0
            return holder

        def unpack(holder, frames):
            if frames == 2 and seen["winner_freed_first"] is None:
                seen["winner_freed_first"] = live[3] == 0
            return holder.tensor

        def tracked(x, sigma, text):
            frames = x.shape[2]
            with torch.autograd.graph.saved_tensors_hooks(lambda t: pack(t, frames), lambda h: unpack(h, frames)):
                return velocity(transformer)(x, sigma, text)

        calls = []
        handle = first_param.register_hook(lambda grad: calls.append(1))
        transformer.zero_grad(set_to_none=True)
        dpo_step(tracked, velocity(reference), batch, 20.0, mode)
        handle.remove()
        assert seen == {"both_held": both_held, "winner_freed_first": winner_freed_first}, mode
        assert len(calls) == backward_calls, mode
        assert live[3] == 0 and live[2] == 0  # nothing outlives the step


@pytest.mark.parametrize("mode", MODES)
def test_loss_scale_scales_the_gradient(wan, mode):
    transformer, reference = wan
    batch = tiny_batch(2)
    terms, unit = gradients(wan, mode, batch)
    scaled_terms, scaled = gradients(wan, mode, batch, loss_scale=0.25)
    assert_close(scaled, 0.25 * unit, rtol=1e-5, atol=1e-8)
    assert scaled_terms.loss == terms.loss  # logged unscaled


def test_grad_sync_wraps_the_winner_branch_of_sequential_only(wan):
    transformer, reference = wan
    batch = tiny_batch(2)
    state = {"inside": False, "entered": 0}

    class NoSync:
        def __enter__(self):
            state["inside"], state["entered"] = True, state["entered"] + 1

        def __exit__(self, *exc):
            state["inside"] = False

    forwards, backwards = [], []

    def recorded(x, sigma, text):
        if torch.is_grad_enabled():
            forwards.append((x.shape[2], state["inside"]))
        return velocity(transformer)(x, sigma, text)

    handle = next(transformer.parameters()).register_hook(lambda grad: backwards.append(state["inside"]))
    dpo_step(recorded, velocity(reference), batch, 20.0, "sequential", grad_sync=NoSync)
    assert forwards == [(3, True), (2, False)] and backwards == [True, False] and state["entered"] == 1
    forwards.clear(), backwards.clear()
    dpo_step(recorded, velocity(reference), batch, 20.0, "standard", grad_sync=NoSync)
    assert forwards == [(3, False), (2, False)] and backwards == [False] and state["entered"] == 1
    handle.remove()
    with pytest.raises(ValueError, match="sequential"):
        dpo_step(recorded, velocity(reference), batch, 20.0, "decoupled", grad_sync=NoSync)


def test_ddp_all_reduces_once_per_step_with_no_sync(wan, tmp_path):
    """With DDP's no_sync as grad_sync, standard and sequential all-reduce every bucket exactly once
    and give the single-process gradient; decoupled is refused because DDP arms its all-reduce in
    forward (shown last: a no_sync around the first of two backwards does not stop it)."""
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this session")
    transformer, reference = wan
    batch = tiny_batch(2)
    expected = gradients(wan, "standard", batch)[1]
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(transformer)
        reduced = []

        def count_buckets(state, bucket):
            reduced.append(bucket.index())
            future = torch.futures.Future()
            future.set_result(bucket.buffer())
            return future

        ddp.register_comm_hook(None, count_buckets)
        through_ddp = lambda x, sigma, text: ddp(x, sigma * 1000, text, return_dict=False)[0]  # noqa: E731
        for mode in ("standard", "sequential"):
            transformer.zero_grad(set_to_none=True)
            reduced.clear()
            dpo_step(through_ddp, velocity(reference), batch, 20.0, mode, grad_sync=ddp.no_sync)
            assert sorted(reduced) == list(range(len(set(reduced)))) and len(reduced) >= 1, mode
            grad = torch.cat([p.grad.flatten() for p in transformer.parameters()])
            assert_close(grad, expected, rtol=0, atol=1e-6)
        with pytest.raises(ValueError, match="decoupled"):
            dpo_step(through_ddp, velocity(reference), batch, 20.0, "decoupled", grad_sync=ddp.no_sync)
        reduced.clear()
        with ddp.no_sync():
            first = through_ddp(batch.winner, batch.sigma, batch.text).sum()
        second = through_ddp(batch.loser, batch.sigma, batch.text).sum()
        with ddp.no_sync():
            first.backward()
        assert reduced, "DDP no longer reduces in a no_sync backward after a synced forward: decoupled could take grad_sync"
        second.backward()
    finally:
        dist.destroy_process_group()


# -- on-policy hard negatives ------------------------------------------------------------------
SCORES = torch.tensor([[0.9, 0.1, 0.5, 0.8, 0.2], [90.0, 10.0, 50.0, 80.0, 20.0]])  # two critics, two scales
AGREEMENT = torch.tensor([0.9, 0.9, 0.9, 0.2, 0.9])  # sample 3 does not follow the prompt


def test_hard_negatives_on_a_hand_built_group():
    # z-scores of both critics: [1.265, -1.265, 0, 0.949, -0.949]. Pairs with sample 3: 4 rejected
    # for agreement. Among {0, 1, 2, 4}, gaps: (0,1) 2.53, (0,4) 2.21, (0,2) 1.26, (1,2) 1.26,
    # (2,4) 0.95, (1,4) 0.32 — the last two are below 1.0.
    selection = select_hard_negatives(SCORES, AGREEMENT, agreement_threshold=0.5, gap_threshold=1.0, max_pairs=2)
    assert selection.pairs == [(0, 1), (0, 4)]
    assert_close(selection.gaps, torch.tensor([2 * 0.4, 0.7], dtype=torch.float64) / math.sqrt(0.1))
    assert (selection.considered, selection.rejected_agreement, selection.rejected_gap, selection.kept) == (10, 4, 2, 2)
    everything = select_hard_negatives(SCORES, AGREEMENT, 0.5, 1.0, max_pairs=10)
    assert set(everything.pairs) == {(0, 1), (0, 4), (0, 2), (2, 1)}  # the better sample is always the winner
    ranked = select_hard_negatives(SCORES, AGREEMENT, 0.5, 0.5, max_pairs=2, method="rank")
    assert ranked.pairs == [(0, 1), (0, 4)] and ranked.rejected_gap == 2


def test_ensemble_quality_is_scale_free_and_ignores_flat_critics():
    flat = torch.cat([SCORES[:1], SCORES[:1] * 1000.0, torch.full((1, 5), 0.7)])
    assert_close(ensemble_quality(flat), ensemble_quality(SCORES[:1]) * 2 / 3)
    ties = ensemble_quality(torch.tensor([[1.0, 1.0, 3.0]]), method="rank")
    assert_close(ties, torch.tensor([0.25, 0.25, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="gap_threshold"):
        select_hard_negatives(SCORES, AGREEMENT, 0.5, 0.0, 2)
