"""GRPO on the tiny model: the log-probs the loss uses are those of generation, and one update moves probability
mass toward the completion with the higher advantage."""

from functools import partial

import pytest
import torch

from r1lab.infra.hf import load_model, load_tokenizer
from r1lab.maths.rl import constant_length, grpo_loss, seq_mean_token_mean, token_mean
from r1lab.stages.rollout_batch import RolloutBatch, completion_logprobs, pack_rollout


@pytest.fixture
def model_and_tokenizer(tokenizer_dir):
    torch.manual_seed(0)
    return load_model(tokenizer_dir), load_tokenizer(tokenizer_dir)


def test_logprobs_ignore_left_padding(model_and_tokenizer):
    model, tok = model_and_tokenizer
    short, long = tok("What is 2 + 3?").input_ids, tok("Calculate 12 + 30 - 7 please.").input_ids
    completion = tok(" 5 </think> <answer> 5 </answer>").input_ids
    ids, attn, _ = pack_rollout([short, long], [completion, completion], tok.pad_token_id)
    model.eval()
    with torch.no_grad():
        padded = completion_logprobs(model, ids, attn, len(completion))[0][0]           # short prompt, left-padded
        alone = completion_logprobs(model, *pack_rollout([short], [completion], tok.pad_token_id)[:2], len(completion))[0][0]
        full = torch.log_softmax(model(torch.tensor([short + completion])).logits[0, len(short) - 1:-1], -1)
    assert torch.allclose(padded, alone, atol=1e-5)
    assert torch.allclose(alone, full.gather(1, torch.tensor(completion)[:, None])[:, 0], atol=1e-5)


def test_one_update_favours_the_positive_advantage(model_and_tokenizer):
    model, tok = model_and_tokenizer
    prompt = tok("What is 2 + 3? Assistant: <think>").input_ids
    good, bad = tok(" 2 + 3 = 5. </think> <answer> 5 </answer>").input_ids, tok(" 7 </think> <answer> 9 </answer>").input_ids
    ids, attn, cmask = pack_rollout([prompt, prompt], [good, bad], tok.pad_token_id)
    width = cmask.size(1)
    seq_logprob = lambda: (completion_logprobs(model, ids, attn, width)[0] * cmask).sum(1) / cmask.sum(1)  # token means
    with torch.no_grad():
        before = seq_logprob()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    logprobs, _ = completion_logprobs(model, ids, attn, width)
    loss, _ = grpo_loss(logprobs, logprobs.detach(), torch.tensor([1.0, -1.0]), cmask)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        after = seq_logprob()
    # the loss is -(mean log p(good) - mean log p(bad)) / 2 at ratio 1: a small step widens the gap
    assert after[0] - after[1] > before[0] - before[1] + 1e-3
    assert after[1] < before[1]


@pytest.mark.parametrize("rule", [seq_mean_token_mean, token_mean, partial(constant_length, max_tokens=4)],
                         ids=["seq_mean_token_mean", "token_mean", "constant_length"])
def test_dropped_and_trimmed_micro_batches_give_the_whole_batch_gradient(rule):
    """Rows of zero advantage left out, the rest sorted by length and cut into micro-batches trimmed to their own
    width: with the weights set once over the whole rollout, the micro-batch losses add up to the whole batch's loss
    and gradient, for every token-weight rule."""
    torch.manual_seed(0)
    lengths = torch.tensor([4, 1, 3, 2, 4, 2])
    ids, attn, cmask = pack_rollout([[7, 8], [9]] * 3, [[5] * n for n in lengths.tolist()], pad_id=0)
    advantages = torch.tensor([1.0, -1.0, 0.0, 0.0, 0.5, -0.5])       # rows 2-3: a group with equal rewards
    logprobs, old = torch.randn(6, 4, requires_grad=True), torch.randn(6, 4)
    weights = rule(cmask)                                               # [6, 4]: the whole rollout, dropped rows too
    kept = torch.tensor([0, 1, 4, 5])
    order = kept[lengths[kept].argsort(stable=True)]
    batch = RolloutBatch(ids, attn, cmask, advantages, weights, old_logprobs=old).select(order)
    whole, _ = grpo_loss(logprobs, old, advantages, cmask, weights=weights)
    expected = torch.autograd.grad(whole, logprobs)[0]
    parts, start = 0.0, 0
    for mb in batch.micro_batches(2):
        rows, width = order[start:start + mb.input_ids.size(0)], mb.completion_mask.size(1)
        start += len(rows)
        loss, _ = grpo_loss(logprobs[rows, :width], mb.old_logprobs, mb.advantages, mb.completion_mask,
                            weights=mb.weights)
        parts = parts + loss
    assert [mb.completion_mask.size(1) for mb in batch.micro_batches(2)] == [2, 4]   # the short pair is cut
    assert parts.item() == pytest.approx(whole.item(), abs=1e-6)
    assert torch.allclose(torch.autograd.grad(parts, logprobs)[0], expected, atol=1e-6)


def test_default_weights_give_the_papers_per_sequence_mean():
    """seq_mean_token_mean's weights reproduce the mean over completions of each one's token mean, and each
    micro-batch's share of it is its own sequence mean times n / N."""
    torch.manual_seed(0)
    per_token, mask = torch.randn(6, 5), (torch.rand(6, 5) < 0.7).long()
    seq_mean = lambda x, m: ((x * m).sum(1) / m.sum(1).clamp(min=1)).mean()
    weights = seq_mean_token_mean(mask)
    assert (per_token * weights).sum().item() == pytest.approx(seq_mean(per_token, mask).item(), abs=1e-6)
    assert (per_token[:2] * weights[:2]).sum().item() == pytest.approx(seq_mean(per_token[:2], mask[:2]).item() * 2 / 6,
                                                                       abs=1e-6)


def test_trimmed_micro_batch_has_the_same_logprobs(model_and_tokenizer):
    model, tok = model_and_tokenizer
    prompts = [tok("What is 2 + 3?").input_ids, tok("Calculate 12 + 30 - 7 please.").input_ids]
    completions = [tok(" 5 </think>").input_ids, tok(" 35 </think> <answer> 35 </answer>").input_ids]
    ids, attn, cmask = pack_rollout(prompts, completions, tok.pad_token_id)
    full = RolloutBatch(ids, attn, cmask, torch.zeros(2), seq_mean_token_mean(cmask))
    short = full.select(torch.tensor([0])).trimmed()          # no left padding, no trailing completion padding
    assert short.input_ids.size(1) == len(prompts[0]) + len(completions[0])
    model.eval()
    with torch.no_grad():
        whole = completion_logprobs(model, ids, attn, cmask.size(1))[0][0, :len(completions[0])]
        alone = completion_logprobs(model, short.input_ids, short.attention_mask, short.completion_mask.size(1))[0][0]
    assert torch.allclose(whole, alone, atol=1e-5)
