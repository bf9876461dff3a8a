import torch

from algorithms.grpo import clipped_surrogate, gaussian_mean_kl, group_advantages, select_train_timesteps


def test_group_advantages_matches_eq_1_with_population_std():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.5, 0.5, 0.5, 0.5]])
    adv = group_advantages(rewards)
    row = rewards[0]
    expected = (row - row.mean()) / (((row - row.mean()) ** 2).mean().sqrt() + 1e-6)
    torch.testing.assert_close(adv[0], expected)
    assert torch.equal(adv[1], torch.zeros(4))  # a group with no spread carries no signal
    torch.testing.assert_close(group_advantages(rewards[0]), expected)


def test_group_advantages_invariant_to_reward_shift_and_scale():
    rewards = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(group_advantages(rewards), group_advantages(4.0 * rewards + 7.0), atol=1e-5, rtol=1e-5)


def test_surrogate_at_ratio_one_is_minus_mean_advantage_and_clips():
    lp = torch.zeros(4)
    adv = torch.tensor([1.0, -1.0, 2.0, 0.5])
    terms = clipped_surrogate(lp, lp, adv, clip_range=0.2)
    torch.testing.assert_close(terms.loss, -adv.mean())
    assert terms.clip_fraction == 0
    # Positive advantage, ratio above 1+clip: clipped term (constant) wins, no gradient.
    new = torch.tensor([0.5], requires_grad=True)
    clipped_surrogate(new, torch.zeros(1), torch.tensor([1.0]), clip_range=0.2).loss.backward()
    assert new.grad.item() == 0.0


def test_advantages_are_clipped_and_weights_scale_samples():
    lp = torch.zeros(2)
    terms = clipped_surrogate(lp, lp, torch.tensor([10.0, 0.0]), clip_range=0.2, adv_clip_max=5.0)
    torch.testing.assert_close(terms.loss, torch.tensor(-2.5))
    weighted = clipped_surrogate(lp, lp, torch.tensor([1.0, 1.0]), 0.2, sample_weights=torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(weighted.loss, torch.tensor(-1.0))


def test_kl_is_closed_form_and_enters_with_beta():
    mean, ref, std = torch.ones(2, 3), torch.zeros(2, 3), torch.full((2, 1), 0.5)
    kl = gaussian_mean_kl(mean, ref, std)
    torch.testing.assert_close(kl, torch.full((2,), 1 / (2 * 0.25)))
    lp = torch.zeros(2)
    terms = clipped_surrogate(lp, lp, torch.zeros(2), 0.2, kl=kl, kl_beta=0.1)
    torch.testing.assert_close(terms.loss, torch.tensor(0.2))


def test_timestep_subset_is_sorted_unique_and_sized():
    steps = select_train_timesteps(10, 0.6, torch.Generator().manual_seed(0))
    assert len(steps) == 6 and steps == sorted(set(steps)) and all(0 <= s < 10 for s in steps)
