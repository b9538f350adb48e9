"""Train/inference mismatch correction: the sampler (vLLM) and the trainer give the same tokens different log-probs.

Each correction is a pure function of (old_logprobs = the trainer's log-probs of the rollout at sampling time [N, T],
sampler_logprobs = the engine's [N, T], mask [N, T]) -> (per-token multiplier [N, T], detached stats), the
multiplier being a constant weight on each token's loss (0 drops the token). `correct` wraps any of them: sampler
log-probs that are not finite (vLLM emits NaN at entropy collapse) are dropped and counted, and the mismatch is
measured. Ratios are exp(old - sampler), the trainer's probability over the sampler's, clamped like rl.py's.
Shapes: N completions, T completion tokens.
"""

from collections.abc import Callable

import torch

from r1lab.maths.rl import MAX_LOG_RATIO, k3_kl


def _ratio(old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor) -> torch.Tensor:
    return torch.exp((old_logprobs - sampler_logprobs).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))


def tis_weights(old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, mask: torch.Tensor,
                cap: float = 2.0) -> tuple[torch.Tensor, dict]:
    """Truncated importance sampling (Yao et al. 2025): each token weighs min(exp(old - sampler), cap).

    >>> old = torch.log(torch.tensor([[0.5, 0.9, 0.3]])); sampler = torch.log(torch.tensor([[0.5, 0.3, 0.6]]))
    >>> w, stats = tis_weights(old, sampler, torch.tensor([[1, 1, 1]]), cap=2.0)
    >>> torch.allclose(w, torch.tensor([[1.0, 2.0, 0.5]])), round(stats["capped_frac"].item(), 3)  # ratios 1, 3, 0.5
    (True, 0.333)
    """
    ratio = _ratio(old_logprobs, sampler_logprobs)                                  # [N, T]
    mask = mask.to(ratio.dtype)
    stats = {"capped_frac": ((ratio > cap).to(ratio.dtype) * mask).sum() / mask.sum().clamp(min=1)}
    return ratio.clamp(max=cap) * mask, stats


def icepop_weights(old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, mask: torch.Tensor,
                   low: float = 0.5, high: float = 2.0) -> tuple[torch.Tensor, dict]:
    """IcePop (Ling team 2025): tokens whose ratio exp(old - sampler) lies outside [low, high] are masked out.

    >>> old = torch.log(torch.tensor([[0.5, 0.9, 0.1, 0.4]])); sampler = torch.log(torch.tensor([[0.5, 0.3, 0.6, 0.2]]))
    >>> w, _ = icepop_weights(old, sampler, torch.tensor([[1, 1, 1, 0]]))   # ratios 1, 3, 1/6, (2: padding)
    >>> w.tolist()
    [[1.0, 0.0, 0.0, 0.0]]
    """
    ratio = _ratio(old_logprobs, sampler_logprobs)                                  # [N, T]
    keep = (ratio >= low) & (ratio <= high)
    return (keep & mask.bool()).to(ratio.dtype), {}


def seq_mask_weights(old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, mask: torch.Tensor,
                     low: float = 0.99, high: float = 1.01) -> tuple[torch.Tensor, dict]:
    """Geometric-mean sequence mask: a completion whose exp(mean over its tokens of (old - sampler)) lies outside
    [low, high] is dropped whole.

    >>> old = torch.tensor([[-1.0, -1.0], [-1.0, -1.0]]); sampler = torch.tensor([[-1.0, -1.0], [-1.1, -0.95]])
    >>> w, _ = seq_mask_weights(old, sampler, torch.tensor([[1, 1], [1, 1]]))   # row 2: exp(0.025) = 1.025
    >>> w.tolist()
    [[1.0, 1.0], [0.0, 0.0]]
    """
    mask = mask.to(old_logprobs.dtype)
    mean_log = ((old_logprobs - sampler_logprobs) * mask).sum(1) / mask.sum(1).clamp(min=1)   # [N]
    ratio = torch.exp(mean_log.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))
    keep = ((ratio >= low) & (ratio <= high)).to(mask.dtype)                                   # [N]
    return keep.unsqueeze(1) * mask, {}


def correct(correction: Callable, old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor,
            mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """`correction`'s multiplier [N, T] after dropping the tokens whose sampler log-prob is not finite, with its
    stats and the mismatch's: `mismatch_kl` = mean over the finite tokens of the k3 estimate of KL(sampler || trainer)
    (the tokens were drawn by the sampler), `mismatch_masked_frac` = share of tokens with multiplier 0,
    `mismatch_nonfinite` = how many tokens had a non-finite sampler log-prob.

    >>> old = torch.zeros(1, 3); sampler = torch.tensor([[0.0, float("nan"), float("-inf")]])
    >>> w, stats = correct(icepop_weights, old, sampler, torch.ones(1, 3))
    >>> w.tolist(), {k: round(v.item(), 3) for k, v in stats.items()}
    ([[1.0, 0.0, 0.0]], {'mismatch_kl': 0.0, 'mismatch_masked_frac': 0.667, 'mismatch_nonfinite': 2.0})
    """
    mask = mask.bool()
    finite = torch.isfinite(sampler_logprobs)
    valid = mask & finite                                                           # [N, T]
    sampler = torch.where(finite, sampler_logprobs, old_logprobs)                   # ratio 1 where dropped
    weights, stats = correction(old_logprobs, sampler, valid)
    weights = (weights * valid).detach()
    n_tokens, n_valid = mask.sum().clamp(min=1), valid.sum().clamp(min=1)
    kl = k3_kl(sampler, old_logprobs)                                               # [N, T]
    stats = {"mismatch_kl": (kl * valid).sum() / n_valid,
             "mismatch_masked_frac": ((weights == 0) & mask).sum() / n_tokens,
             "mismatch_nonfinite": (mask & ~finite).sum().to(old_logprobs.dtype)} | stats
    return weights, {k: v.detach().float() for k, v in stats.items()}
