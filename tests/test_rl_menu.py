"""The RL menu's loss, advantage and mismatch-correction variants (issue 26): each against hand-computed values,
each one config override away, the engines' log-probs, and GRPO on the tiny model with a correction on."""

import math

import pytest
import torch
from hydra.utils import instantiate

from r1lab.infra.hf import load_model, load_tokenizer
from r1lab.maths.mismatch import correct, icepop_weights, seq_mask_weights, tis_weights
from r1lab.maths.rl import group_advantages, grpo_loss, gspo_loss, rloo_advantages, seq_mean_token_mean
from r1lab.rollout.engine import Completion, HFRollout, SamplingConfig
from r1lab.stages.rollout_batch import RolloutBatch, completion_logprobs, corrected, pack_rollout, sampler_logprobs

NAN = float("nan")


# ---- advantages ------------------------------------------------------------------------------------------------
def test_rloo_is_reward_minus_the_mean_of_the_others():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 1.0, 0.0, 1.0])   # groups of 4
    # group 1: 1 - 0 = 1, 0 - 1/3 (x3); group 2: 2 - 2/3, 1 - 1, 0 - 4/3, 1 - 1
    expected = torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3, 4 / 3, 0.0, -4 / 3, 0.0])
    assert torch.allclose(rloo_advantages(rewards, 4), expected)


@pytest.mark.parametrize("option", ["grpo", "rloo", "dr_grpo"])
def test_every_advantage_option_gives_unjudged_and_constant_groups_zero(compose_train, option):
    advantages = instantiate(compose_train("experiment=r1_zero", f"module/advantage={option}").module.advantages)
    out = advantages(torch.tensor([NAN, 1.0, 1.0, 1.0, 3.0, 1.0]), 2)
    assert torch.isfinite(out).all() and out[:4].tolist() == [0.0, 0.0, 0.0, 0.0]
    hand = {"grpo": 1 / (math.sqrt(2) + 1e-4), "rloo": 2.0, "dr_grpo": 1.0}[option]   # rewards 3, 1: std sqrt(2)
    assert torch.allclose(out[4:], torch.tensor([hand, -hand]))


# ---- GSPO ------------------------------------------------------------------------------------------------------
def test_gspo_ratio_is_per_sequence_and_its_gradient_flows_through_the_mean():
    lp = torch.tensor([[-1.0, -2.0, 0.0], [-1.0, -1.0, -1.0]], requires_grad=True)
    old = torch.tensor([[-1.0, -2.0, 9.0], [-1.0, -1.0, -1.0]])          # row 1's third token is padding
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    loss, stats = gspo_loss(lp, old, torch.tensor([2.0, -1.0]), mask)
    loss.backward()
    # s = 1 for both; loss = mean over sequences of -s A = -(2 - 1) / 2; d/dlp_t = -A_i s_i / |y_i| / N
    assert loss.item() == pytest.approx(-0.5)
    assert torch.allclose(lp.grad, torch.tensor([[-0.5, -0.5, 0.0], [1 / 6, 1 / 6, 1 / 6]]))
    assert stats["ratio_mean"].item() == pytest.approx(1.0)


def test_gspo_clips_the_sequence_ratio_at_the_papers_epsilons():
    lp = torch.tensor([[-1.0, -1.0], [-1.0, -1.0]], requires_grad=True)
    old = torch.tensor([[-1.002, -1.0], [-0.998, -1.0]])                 # s = e^0.001 and e^-0.001
    loss, stats = gspo_loss(lp, old, torch.tensor([1.0, -1.0]), torch.ones(2, 2))   # eps 3e-4 / 4e-4
    loss.backward()
    assert lp.grad.abs().sum() == 0                                      # both clipped: no gradient
    assert loss.item() == pytest.approx(-((1 + 4e-4) - (1 - 3e-4)) / 2, rel=1e-3)   # float32
    assert stats["clip_frac_high"].item() == 0.5 and stats["clip_frac_low"].item() == 0.5


def test_gspo_with_one_token_sequences_is_grpo():
    lp, old = torch.tensor([[-0.5], [-2.0], [-1.0]]), torch.tensor([[-1.0], [-1.0], [-1.0]])
    adv, mask = torch.tensor([1.0, -1.0, 0.5]), torch.ones(3, 1)
    assert gspo_loss(lp, old, adv, mask, clip_low=0.2, clip_high=0.2)[0].item() == pytest.approx(
        grpo_loss(lp, old, adv, mask)[0].item())


@pytest.mark.parametrize("option", ["grpo", "gspo"])
def test_loss_options_take_the_modules_call(compose_train, option):
    """The module calls every loss alike: (logprobs, old, advantages, mask, ref, weights=..., kl_coef=...)."""
    loss_fn = instantiate(compose_train("experiment=r1_zero", f"module/loss={option}").module.loss)
    lp, mask = torch.zeros(2, 3), torch.ones(2, 3)
    loss, stats = loss_fn(lp, lp, torch.tensor([1.0, -1.0]), mask, lp - 1, weights=seq_mean_token_mean(mask),
                          kl_coef=0.1)
    assert loss.item() == pytest.approx(0.1 * (math.exp(-1) + 1 - 1))   # advantages cancel; k3 of a -1 log-ratio
    assert set(stats) == {"kl", "clip_frac_low", "clip_frac_high", "ratio_mean"}


def test_defaults_are_todays_grpo(compose_train):
    module = compose_train("experiment=r1_zero").module
    assert instantiate(module.advantages).func is group_advantages and module.advantages.scale_by_std is True
    assert instantiate(module.loss).func is grpo_loss and (module.loss.clip_low, module.loss.clip_high) == (0.2, 0.2)
    assert module.correction is None
    assert compose_train("experiment=reasoning_rl").module.loss.clip_high == 10.0


# ---- mismatch corrections --------------------------------------------------------------------------------------
OLD = torch.log(torch.tensor([[0.5, 0.6, 0.2, 0.5], [0.4, 0.4, 0.4, 0.4]]))
SAMPLER = torch.log(torch.tensor([[0.5, 0.2, 0.5, 0.9], [0.4, 0.4, 0.4, 0.4]]))   # ratios 1, 3, 0.4, (5/9: pad)
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])


def test_tis_caps_the_ratio():
    w, stats = tis_weights(OLD, SAMPLER, MASK, cap=2.0)
    assert torch.allclose(w, torch.tensor([[1.0, 2.0, 0.4, 0.0], [1.0, 1.0, 1.0, 1.0]]))
    assert stats["capped_frac"].item() == pytest.approx(1 / 7)


def test_icepop_masks_tokens_outside_the_band():
    w, _ = icepop_weights(OLD, SAMPLER, MASK, low=0.5, high=2.0)
    assert w.tolist() == [[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]


def test_seq_mask_drops_sequences_by_their_geometric_mean_ratio():
    w, _ = seq_mask_weights(OLD, SAMPLER, MASK)        # row 1: (1 x 3 x 0.4)^(1/3) = 1.063, outside [0.99, 1.01]
    assert w.tolist() == [[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]
    w, _ = seq_mask_weights(OLD, SAMPLER, MASK, low=0.9, high=1.1)
    assert w.tolist() == [[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]]


def test_correct_counts_and_masks_non_finite_sampler_logprobs():
    sampler = SAMPLER.clone()
    sampler[1, 0], sampler[1, 2] = NAN, -math.inf
    w, stats = correct(tis_weights, OLD, sampler, MASK)
    assert w[1].tolist() == [0.0, 1.0, 0.0, 1.0] and torch.isfinite(w).all()
    assert stats["mismatch_nonfinite"].item() == 2.0
    assert stats["mismatch_masked_frac"].item() == pytest.approx(2 / 7)
    # k3 of KL(sampler || trainer) over the 5 finite tokens: r - 1 - log r with r = 1, 3, 0.4, 1, 1
    k3 = lambda r: r - 1 - math.log(r)
    assert stats["mismatch_kl"].item() == pytest.approx((k3(3.0) + k3(0.4)) / 5, rel=1e-5)


# ---- the engine's log-probs and the module's path ----------------------------------------------------------------
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_hf_rollout_returns_the_raw_logprobs_the_trainer_computes(tokenizer_dir, temperature):
    torch.manual_seed(0)
    model, tok = load_model(tokenizer_dir), load_tokenizer(tokenizer_dir)
    prompts = ["What is 2 + 3?", "Calculate 12 + 30 - 7 please."]
    sampling = SamplingConfig(n=2, temperature=temperature, max_new_tokens=6, seed=3)
    groups = HFRollout(model, tok, logprobs=True).generate(prompts, sampling)
    plain = HFRollout(model, tok).generate(prompts, sampling)
    completions = [c for g in groups for c in g]
    assert [c.token_ids for c in completions] == [c.token_ids for g in plain for c in g]   # sampling unchanged
    assert all(c.logprobs is None for g in plain for c in g)
    prompt_ids = [ids for ids in tok(prompts, add_special_tokens=False).input_ids for _ in range(2)]
    ids, attn, cmask = pack_rollout(prompt_ids, [c.token_ids for c in completions], tok.pad_token_id)
    with torch.no_grad():
        trainer = completion_logprobs(model.eval(), ids, attn, cmask.size(1))[0]
    engine = sampler_logprobs(completions, cmask.size(1), tis_weights)
    assert torch.allclose(trainer * cmask, engine, atol=1e-4)


def test_correction_needs_the_engines_logprobs():
    with pytest.raises(ValueError, match="completion 1 has None for 2 tokens"):
        sampler_logprobs([Completion("", [1], True, [-1.0]), Completion("", [1, 2], True)], 2, tis_weights)
    assert sampler_logprobs([Completion("", [1], True)], 1, None) is None


def test_a_perturbed_sampler_engages_the_masks_on_the_modules_path():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    old = torch.full((2, 3), -1.0)
    sampler = old + torch.tensor([[0.0, 1.0, 0.0], [NAN, 0.0, 0.0]])     # token (0, 1): ratio e^-1 < 0.5
    rollout = RolloutBatch(torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4), mask, torch.ones(2),
                           seq_mean_token_mean(mask), old_logprobs=old, sampler_logprobs=sampler)
    out, stats = corrected(rollout, icepop_weights)
    assert out.completion_mask.tolist() == [[1, 0, 1], [0, 1, 0]]
    assert torch.allclose(out.weights, torch.tensor([[1 / 6, 0.0, 1 / 6], [0.0, 0.25, 0.0]]))
    assert stats["mismatch_nonfinite"].item() == 1.0 and stats["mismatch_masked_frac"].item() == pytest.approx(0.4)
    out, _ = corrected(rollout, tis_weights)                              # e^-1 weighs the token, NaN drops one
    assert torch.allclose(out.weights[0], torch.tensor([1 / 6, math.exp(-1) / 6, 1 / 6]))


# ---- GRPO on the tiny model ------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides", [["module/correction=tis"], ["module/loss=gspo", "module/advantage=rloo"]],
                         ids=["tis", "gspo_rloo"])
def test_grpo_runs_each_variant_on_the_tiny_model(compose_train, overrides):
    from r1lab.train import train

    metrics = train(compose_train("experiment=r1_zero", "debug=fdr", "data.batch_size=2", "module.sampling.n=2",
                                  "module.sampling.max_new_tokens=4", "logger=none", "callbacks=none", *overrides))
    assert math.isfinite(metrics["train/loss"])
    if "module/correction=tis" in overrides:   # the sampler is the trainer's own model: no mismatch
        assert metrics["train/mismatch_kl"] < 1e-6
        assert metrics["train/mismatch_masked_frac"] == 0.0 and metrics["train/mismatch_nonfinite"] == 0.0
