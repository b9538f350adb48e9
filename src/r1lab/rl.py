"""The maths of GRPO as small pure tensor functions (DeepSeekMath eq. 3-4; R1 sec. 2.2).

No critic: each completion's advantage is its reward relative to the other completions of the same prompt.
The loss is PPO's clipped surrogate per token plus, optionally, the k3 estimate of KL to a reference policy.
Shapes: N completions (prompts x G, consecutive per prompt), T completion tokens, V vocabulary.
"""

import torch
import torch.nn.functional as F

AGGREGATIONS = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm")
MAX_LOG_RATIO = 20.0  # log-ratios are clamped to +-this before exp: a stale old log-prob cannot overflow to inf/NaN


def group_advantages(rewards: torch.Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """(r - group mean) [/ (group std + eps)] for rewards laid out as consecutive groups of `group_size`.

    >>> group_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), 2, eps=0.0)
    tensor([ 0.7071, -0.7071,  0.0000,  0.0000])
    >>> group_advantages(torch.tensor([3.0, 1.0]), 2, scale_by_std=False)
    tensor([ 1., -1.])
    """
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be [N] with N a multiple of group_size={group_size}, got {tuple(rewards.shape)}")
    grouped = rewards.view(-1, group_size)                          # [P, G]
    centred = grouped - grouped.mean(dim=1, keepdim=True)           # [P, G]
    if scale_by_std:
        std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(centred[:, :1])
        centred = torch.where(std > 0, centred / (std + eps), torch.zeros_like(centred))  # constant group -> 0
    return centred.reshape(-1)                                       # [N]


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref): exp(ref - lp) - (ref - lp) - 1, always >= 0.

    >>> k3_kl(torch.tensor([-1.0]), torch.tensor([-1.0]))
    tensor([0.])
    >>> bool(torch.isfinite(k3_kl(torch.tensor([-500.0]), torch.tensor([-0.1]))).all())  # log-ratio clamped before exp
    True
    """
    delta = (ref_logprobs - logprobs).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    return torch.exp(delta) - delta - 1


def masked_aggregate(per_token: torch.Tensor, mask: torch.Tensor, aggregation: str) -> torch.Tensor:
    """Reduce a [N, T] per-token quantity to a scalar over the tokens in `mask`.

    seq_mean_token_mean: mean over sequences of each sequence's token mean (the paper);
    token_mean: mean over all tokens in the batch (DAPO); seq_mean_token_sum_norm: sum / (N * T) (Dr. GRPO).

    >>> x, m = torch.tensor([[1.0, 1.0], [4.0, 0.0]]), torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    >>> [round(masked_aggregate(x, m, a).item(), 3) for a in AGGREGATIONS]
    [2.5, 2.0, 1.5]
    """
    mask = mask.to(per_token.dtype)
    total = (per_token * mask).sum()
    if aggregation == "seq_mean_token_mean":
        return ((per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()
    if aggregation == "token_mean":
        return total / mask.sum().clamp(min=1)
    if aggregation == "seq_mean_token_sum_norm":
        return total / per_token.numel()
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              ref_logprobs: torch.Tensor | None = None, *, clip_low: float = 0.2, clip_high: float = 0.2,
              kl_coef: float = 0.0, aggregation: str = "seq_mean_token_mean") -> tuple[torch.Tensor, dict]:
    """Clipped-surrogate GRPO loss over completion tokens, with an optional k3 KL penalty.

    logprobs, old_logprobs, ref_logprobs, mask: [N, T]; advantages: [N]. Returns (scalar loss, detached stats).

    >>> lp = torch.zeros(2, 3)
    >>> loss, stats = grpo_loss(lp, lp, torch.tensor([1.0, -1.0]), torch.ones(2, 3))
    >>> loss.item(), stats["ratio_mean"].item()
    (0.0, 1.0)

    The log-ratio is clamped to +-MAX_LOG_RATIO before exp, so a stale or corrupt old log-prob gives a finite loss:

    >>> lp = torch.zeros(2, 3, requires_grad=True)
    >>> loss, _ = grpo_loss(lp, torch.full((2, 3), -1e4), torch.tensor([1.0, -1.0]), torch.ones(2, 3))
    >>> loss.backward(); bool(torch.isfinite(loss)), bool(torch.isfinite(lp.grad).all())
    (True, True)
    """
    mask = mask.to(logprobs.dtype)
    adv = advantages.unsqueeze(1)                                                   # [N, 1]
    ratio = torch.exp((logprobs - old_logprobs).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))  # [N, T]
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high)                             # [N, T]
    per_token = -torch.minimum(ratio * adv, clipped * adv)                          # [N, T]
    stats = {}
    if ref_logprobs is not None and kl_coef != 0.0:
        kl = k3_kl(logprobs, ref_logprobs)                                          # [N, T]
        per_token = per_token + kl_coef * kl
        stats["kl"] = masked_aggregate(kl.detach(), mask, "token_mean")
    loss = masked_aggregate(per_token, mask, aggregation)
    with torch.no_grad():
        n_tokens = mask.sum().clamp(min=1)
        stats["clip_frac_low"] = (((ratio < 1 - clip_low) & (adv < 0)).to(mask.dtype) * mask).sum() / n_tokens
        stats["clip_frac_high"] = (((ratio > 1 + clip_high) & (adv > 0)).to(mask.dtype) * mask).sum() / n_tokens
        stats["ratio_mean"] = (ratio * mask).sum() / n_tokens
        stats.setdefault("kl", torch.zeros((), dtype=logprobs.dtype))
    return loss, {k: v.detach() for k, v in stats.items()}


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """log p(target) per position without a float32 [N, T, V] log-softmax: gather minus logsumexp, in row chunks.

    logits: [N, T, V] (any float dtype); targets: [N, T] long -> [N, T] float32.

    >>> logits = torch.randn(2, 3, 5); targets = torch.randint(0, 5, (2, 3))
    >>> ref = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    >>> torch.allclose(token_logprobs(logits, targets, chunk_size=2), ref, atol=1e-6)
    True
    """
    flat_logits, flat_targets = logits.reshape(-1, logits.size(-1)), targets.reshape(-1)    # [N*T, V], [N*T]
    out = []
    for rows, tgt in zip(flat_logits.split(chunk_size), flat_targets.split(chunk_size)):
        rows = rows.float()                                                                   # [C, V]: one chunk in fp32
        out.append(rows.gather(1, tgt.unsqueeze(1)).squeeze(1) - torch.logsumexp(rows, dim=1))
    return torch.cat(out).view_as(targets)


def token_entropy(logits: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """Entropy of the next-token distribution per position, chunked like `token_logprobs`. [N, T, V] -> [N, T]."""
    flat = logits.reshape(-1, logits.size(-1))
    out = []
    for rows in flat.split(chunk_size):
        logp = F.log_softmax(rows.float(), dim=-1)                                            # [C, V]
        out.append(-(logp.exp() * logp).sum(-1))
    return torch.cat(out).view(logits.shape[:-1])
