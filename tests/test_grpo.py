"""GRPO on the tiny model: the log-probs the loss uses are those of generation, and one update moves probability
mass toward the completion with the higher advantage."""

import pytest
import torch

from r1lab.grpo import RolloutBatch, completion_logprobs, micro_batch_weight, pack_rollout
from r1lab.hf import load_model, load_tokenizer
from r1lab.rl import grpo_loss, masked_aggregate


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


def test_micro_batch_weights_recompose_the_batch_loss():
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.float)
    per_token = torch.arange(12, dtype=torch.float).view(4, 3)
    for aggregation in ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"):
        whole = masked_aggregate(per_token, mask, aggregation)
        parts = sum(masked_aggregate(per_token[i:i + 2], mask[i:i + 2], aggregation) * micro_batch_weight(aggregation, mask[i:i + 2], mask)
                    for i in (0, 2))
        assert parts.item() == pytest.approx(whole.item())


def test_dropped_and_trimmed_micro_batches_give_the_whole_batch_gradient():
    """Rows of zero advantage left out, the rest sorted by length and cut into micro-batches trimmed to their own
    width: the weighted micro-batch losses add up to the whole batch's loss and gradient, for every aggregation."""
    torch.manual_seed(0)
    lengths = torch.tensor([4, 1, 3, 2, 4, 2])
    ids, attn, cmask = pack_rollout([[7, 8], [9]] * 3, [[5] * n for n in lengths.tolist()], pad_id=0)
    advantages = torch.tensor([1.0, -1.0, 0.0, 0.0, 0.5, -0.5])       # rows 2-3: a group with equal rewards
    logprobs, old = torch.randn(6, 4, requires_grad=True), torch.randn(6, 4)
    kept = torch.tensor([0, 1, 4, 5])
    order = kept[lengths[kept].argsort(stable=True)]
    batch = RolloutBatch(ids, attn, cmask, advantages, old_logprobs=old).select(order)
    for aggregation in ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"):
        whole, _ = grpo_loss(logprobs, old, advantages, cmask, aggregation=aggregation)
        expected = torch.autograd.grad(whole, logprobs)[0]
        parts, start = 0.0, 0
        for mb in batch.micro_batches(2):
            rows, width = order[start:start + mb.input_ids.size(0)], mb.completion_mask.size(1)
            start += len(rows)
            loss, _ = grpo_loss(logprobs[rows, :width], mb.old_logprobs, mb.advantages, mb.completion_mask,
                                aggregation=aggregation)
            parts = parts + loss * micro_batch_weight(aggregation, mb.completion_mask, cmask)
        assert [mb.completion_mask.size(1) for mb in batch.micro_batches(2)] == [2, 4]   # the short pair is cut
        assert parts.item() == pytest.approx(whole.item(), abs=1e-6)
        assert torch.allclose(torch.autograd.grad(parts, logprobs)[0], expected, atol=1e-6)


def test_trimmed_micro_batch_has_the_same_logprobs(model_and_tokenizer):
    model, tok = model_and_tokenizer
    prompts = [tok("What is 2 + 3?").input_ids, tok("Calculate 12 + 30 - 7 please.").input_ids]
    completions = [tok(" 5 </think>").input_ids, tok(" 35 </think> <answer> 35 </answer>").input_ids]
    ids, attn, cmask = pack_rollout(prompts, completions, tok.pad_token_id)
    full = RolloutBatch(ids, attn, cmask, torch.zeros(2))
    short = full.select(torch.tensor([0])).trimmed()          # no left padding, no trailing completion padding
    assert short.input_ids.size(1) == len(prompts[0]) + len(completions[0])
    model.eval()
    with torch.no_grad():
        whole = completion_logprobs(model, ids, attn, cmask.size(1))[0][0, :len(completions[0])]
        alone = completion_logprobs(model, short.input_ids, short.attention_mask, short.completion_mask.size(1))[0][0]
    assert torch.allclose(whole, alone, atol=1e-5)
