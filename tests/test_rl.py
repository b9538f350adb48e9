"""GRPO maths against values computed by hand (see the comments for the arithmetic)."""

import math
from functools import partial

import pytest
import torch

from r1lab.maths.rl import (
    constant_length,
    group_advantages,
    grpo_loss,
    k3_kl,
    rollout_stats,
    seq_mean_token_mean,
    token_entropy,
    token_logprobs,
    token_mean,
    zero_variance_groups,
)


def test_group_advantages_by_hand():
    # group [1, 0, 0, 0]: mean 0.25, Bessel std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0]), 4, eps=0.0)
    assert torch.allclose(adv, torch.tensor([1.5, -0.5, -0.5, -0.5, 0.0, 0.0, 0.0, 0.0]))
    eps_adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4, eps=1e-4)
    assert eps_adv[0].item() == pytest.approx(0.75 / 0.5001)
    assert torch.allclose(group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4, scale_by_std=False),
                          torch.tensor([0.75, -0.25, -0.25, -0.25]))


@pytest.mark.parametrize("scale_by_std", [True, False])
def test_constant_groups_get_zero_advantage(scale_by_std):
    rewards = torch.tensor([0.3] * 4 + [1.0] * 4 + [0.0] * 4)
    assert torch.equal(group_advantages(rewards, 4, scale_by_std=scale_by_std), torch.zeros(12))


def test_group_advantages_rejects_ragged_groups():
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(torch.zeros(5), 2)


def _case():
    # ratios: seq 0 (A = +1): 1.5, 0.9; seq 1 (A = -1): 0.5, 3.0 (the last token is padding)
    old = torch.zeros(2, 2)
    logprobs = torch.log(torch.tensor([[1.5, 0.9], [0.5, 3.0]]))
    return logprobs, old, torch.tensor([1.0, -1.0]), torch.tensor([[1.0, 1.0], [1.0, 0.0]])


@pytest.mark.parametrize("rule, expected", [
    # token losses with clip 0.2: -min(1.5, 1.2) = -1.2, -min(0.9, 0.9) = -0.9, -min(-0.5, -0.8) = 0.8
    (seq_mean_token_mean, ((-1.2 - 0.9) / 2 + 0.8) / 2),
    (token_mean, (-1.2 - 0.9 + 0.8) / 3),
    (partial(constant_length, max_tokens=4), (-1.2 - 0.9 + 0.8) / (2 * 4)),   # N x a budget of 4 tokens
])
def test_grpo_loss_weight_rules_by_hand(rule, expected):
    logprobs, old, adv, mask = _case()
    loss, stats = grpo_loss(logprobs, old, adv, mask, weights=rule(mask))
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert stats["clip_frac_high"].item() == pytest.approx(1 / 3)   # ratio 1.5 > 1.2 with A > 0
    assert stats["clip_frac_low"].item() == pytest.approx(1 / 3)    # ratio 0.5 < 0.8 with A < 0
    assert stats["ratio_mean"].item() == pytest.approx((1.5 + 0.9 + 0.5) / 3)
    assert stats["kl"].item() == 0.0


def test_grpo_loss_asymmetric_clip():
    # clip_high 10 (R1's reasoning RL): the 1.5 ratio is no longer clipped: -1.5 instead of -1.2
    logprobs, old, adv, mask = _case()
    loss, stats = grpo_loss(logprobs, old, adv, mask, clip_high=10.0, weights=token_mean(mask))
    assert loss.item() == pytest.approx((-1.5 - 0.9 + 0.8) / 3, abs=1e-6)
    assert stats["clip_frac_high"].item() == 0.0


def test_grpo_loss_with_k3_kl_by_hand():
    logprobs, old, adv, mask = _case()
    ref = logprobs.clone()
    ref[0, 0] += math.log(2.0)                     # only token (0, 0) differs: kl = 2 - ln 2 - 1
    kl00 = 2 - math.log(2) - 1
    loss, stats = grpo_loss(logprobs, old, adv, mask, ref, kl_coef=0.1)
    assert loss.item() == pytest.approx(((-1.2 + 0.1 * kl00 - 0.9) / 2 + 0.8) / 2, abs=1e-6)
    assert stats["kl"].item() == pytest.approx(kl00 / 3, abs=1e-6)
    no_kl, _ = grpo_loss(logprobs, old, adv, mask, ref, kl_coef=0.0)       # kl_coef 0: KL skipped
    assert no_kl.item() == pytest.approx(((-1.2 - 0.9) / 2 + 0.8) / 2, abs=1e-6)


def test_k3_is_nonnegative_and_zero_only_at_equality():
    lp, ref = torch.randn(1000), torch.randn(1000)
    assert (k3_kl(lp, ref) >= 0).all()
    assert torch.equal(k3_kl(lp, lp), torch.zeros(1000))


def test_loss_gradient_raises_logprob_of_positive_advantage():
    logprobs = torch.zeros(2, 3, requires_grad=True)
    loss, _ = grpo_loss(logprobs, logprobs.detach(), torch.tensor([1.0, -1.0]), torch.ones(2, 3))
    loss.backward()
    assert (logprobs.grad[0] < 0).all() and (logprobs.grad[1] > 0).all()  # descent raises seq 0, lowers seq 1


def test_default_weights_are_the_papers():
    logprobs, old, adv, mask = _case()
    assert grpo_loss(*_case())[0].item() == grpo_loss(logprobs, old, adv, mask, weights=seq_mean_token_mean(mask))[0].item()


@pytest.mark.parametrize("rule, total", [
    (seq_mean_token_mean, 2 / 3),                       # each non-empty completion weighs 1/N (N = 3)
    (token_mean, 1.0),                                  # the rollout's 4 tokens share 1
    (partial(constant_length, max_tokens=5), 4 / (3 * 5)),   # 4 tokens / (N x a budget of 5)
])
def test_weight_rules_keep_padding_out_and_have_their_totals(rule, total):
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])   # the last completion is empty
    weights = rule(mask)
    assert weights.shape == mask.shape and torch.equal(weights[mask == 0], torch.zeros(int((mask == 0).sum())))
    assert weights.sum().item() == pytest.approx(total)


def test_zero_variance_groups_and_rollout_stats():
    rewards = torch.tensor([1.0, 1.0, 0.0, 2.0, 0.5, 0.5])
    assert zero_variance_groups(rewards, 2).tolist() == [True, False, True]
    stats = rollout_stats(rewards, torch.tensor([2.0, 4.0, 6.0, 8.0, 1.0, 3.0]), torch.tensor([True] * 5 + [False]), 2)
    assert stats["zero_variance_frac"].item() == pytest.approx(2 / 3)
    assert stats["truncated_frac"].item() == pytest.approx(1 / 6)
    assert stats["completion_len_mean"].item() == 4.0 and stats["completion_len_max"].item() == 8.0
    assert stats["reward_mean"].item() == pytest.approx(5 / 6)


def test_token_logprobs_and_entropy_match_log_softmax_in_bf16_chunks():
    logits = torch.randn(3, 7, 50, dtype=torch.bfloat16)
    targets = torch.randint(0, 50, (3, 7))
    ref = torch.log_softmax(logits.float(), -1)
    assert torch.allclose(token_logprobs(logits, targets, chunk_size=4), ref.gather(-1, targets[..., None])[..., 0], atol=1e-5)
    assert torch.allclose(token_entropy(logits, chunk_size=5), -(ref.exp() * ref).sum(-1), atol=1e-5)
