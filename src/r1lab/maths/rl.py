"""The maths of GRPO as small pure tensor functions (DeepSeekMath eq. 3-4; R1 sec. 2.2).

No critic: each completion's advantage is its reward relative to the other completions of the same prompt. A reward
of NaN means "could not be judged" (a gold answer the checker cannot read): its whole group gets advantage 0.
The loss is PPO's clipped surrogate per token plus, optionally, the k3 estimate of KL to a reference policy, summed
with per-token weights that a token-weight rule (the paper's, DAPO's or Dr. GRPO's) sets once over the whole rollout.
Shapes: N completions (prompts x G, consecutive per prompt), T completion tokens, V vocabulary.
"""

import torch
import torch.nn.functional as F

MAX_LOG_RATIO = 20.0  # log-ratios are clamped to +-this before exp: a stale old log-prob cannot overflow to inf/NaN


def group_advantages(rewards: torch.Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """(r - group mean) [/ (group std + eps)] for rewards laid out as consecutive groups of `group_size`; 0 for every
    completion of a group with an unjudged (NaN) reward.

    >>> group_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), 2, eps=0.0)
    tensor([ 0.7071, -0.7071,  0.0000,  0.0000])
    >>> group_advantages(torch.tensor([3.0, 1.0]), 2, scale_by_std=False)
    tensor([ 1., -1.])
    >>> group_advantages(torch.tensor([float("nan"), 1.0, 1.0, 0.0]), 2, eps=0.0)
    tensor([ 0.0000,  0.0000,  0.7071, -0.7071])
    """
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be [N] with N a multiple of group_size={group_size}, got {tuple(rewards.shape)}")
    grouped = rewards.view(-1, group_size)                          # [P, G]
    grouped = torch.where(unjudged_groups(rewards, group_size).unsqueeze(1), 0.0, grouped)  # NaN group -> constant
    centred = grouped - grouped.mean(dim=1, keepdim=True)           # [P, G]
    if scale_by_std:
        std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(centred[:, :1])
        centred = torch.where(std > 0, centred / (std + eps), torch.zeros_like(centred))  # constant group -> 0
    return centred.reshape(-1)                                       # [N]


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024): r_i minus the mean of the other G - 1 rewards of its group, i.e. G / (G - 1) x
    (r_i - group mean); 0 for every completion of a group with an unjudged (NaN) reward, and for groups of one.

    >>> rloo_advantages(torch.tensor([1.0, 0.0, 0.0, 3.0, 3.0, 0.0]), 3)   # 1 - 0, 0 - 0.5, ...; 3 - 1.5, 0 - 3
    tensor([ 1.0000, -0.5000, -0.5000,  1.5000,  1.5000, -3.0000])
    >>> rloo_advantages(torch.tensor([float("nan"), 1.0, 2.0, 0.0]), 2)
    tensor([ 0.,  0.,  2., -2.])
    """
    centred = group_advantages(rewards, group_size, scale_by_std=False)     # [N] r_i - mean, 0 in NaN groups
    return centred * (group_size / (group_size - 1)) if group_size > 1 else torch.zeros_like(centred)


def unjudged_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[N] rewards in consecutive groups -> [P] True where a group has a reward that could not be judged (NaN).

    >>> unjudged_groups(torch.tensor([1.0, float("nan"), 0.0, 1.0]), 2)
    tensor([ True, False])
    """
    return ~torch.isfinite(rewards.view(-1, group_size)).all(dim=1)  # [P]


def zero_variance_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[N] rewards in consecutive groups -> [P] True where a group's rewards are all equal (its advantages are 0).

    >>> zero_variance_groups(torch.tensor([1.0, 1.0, 0.0, 1.0]), 2), zero_variance_groups(torch.tensor([1.0, 0.0]), 1)
    (tensor([ True, False]), tensor([True, True]))
    """
    if group_size == 1:                                              # a group of one has no spread
        return torch.ones(rewards.numel(), dtype=torch.bool)
    return rewards.view(-1, group_size).std(dim=1) == 0              # [P]


def rollout_stats(rewards: torch.Tensor, lengths: torch.Tensor, finished: torch.Tensor, group_size: int,
                  per_reward: dict[str, list] | None = None, kinds: list | None = None) -> dict[str, torch.Tensor]:
    """What one rollout looked like: rewards [N], completion lengths [N] and finished flags [N] -> scalar statistics;
    `per_reward` (name -> values, None where a reward does not apply) and `kinds` (the rows' kind) add breakdowns.
    Reward statistics leave unjudged (NaN) rewards out; `unjudged_frac` is the share of groups left out for them.

    >>> stats = rollout_stats(torch.tensor([1.0, 0.0, 2.0, 2.0]), torch.tensor([3.0, 5.0, 4.0, 8.0]),
    ...                       torch.tensor([True, True, False, True]), 2, {"acc": [1.0, 0.0, None, None]}, list("abbb"))
    >>> {k: round(v.item(), 3) for k, v in stats.items()}  # doctest: +NORMALIZE_WHITESPACE
    {'reward_mean': 1.25, 'reward_std': 0.957, 'completion_len_mean': 5.0, 'completion_len_max': 8.0,
     'truncated_frac': 0.25, 'zero_variance_frac': 0.5, 'unjudged_frac': 0.0, 'reward_mean_a': 1.0,
     'reward_mean_b': 1.333, 'rewards/acc_mean': 0.5, 'rewards/acc_std': 0.707}
    >>> stats = rollout_stats(torch.tensor([float("nan"), 0.0, 2.0, 2.0]), torch.ones(4), torch.ones(4).bool(), 2)
    >>> [round(stats[k].item(), 3) for k in ("reward_mean", "zero_variance_frac", "unjudged_frac")]
    [1.333, 0.5, 0.5]
    """
    spread = lambda x: x.std() if len(x) > 1 else torch.tensor(0.0)
    judged = torch.isfinite(rewards)                                 # [N]
    stats = {"reward_mean": rewards[judged].mean(), "reward_std": spread(rewards[judged]),
             "completion_len_mean": lengths.mean(), "completion_len_max": lengths.max(),
             "truncated_frac": (~finished).float().mean(),
             "zero_variance_frac": zero_variance_groups(rewards, group_size).float().mean(),
             "unjudged_frac": unjudged_groups(rewards, group_size).float().mean()}
    for kind in sorted({k for k in kinds or [] if k is not None}):  # per kind: each kind gets its own rewards
        stats[f"reward_mean_{kind}"] = rewards[judged & torch.tensor([k == kind for k in kinds])].mean()
    for name, values in (per_reward or {}).items():
        scored = torch.tensor([v for v in values if v is not None], dtype=torch.float)
        if len(scored):
            stats[f"rewards/{name}_mean"], stats[f"rewards/{name}_std"] = scored.mean(), spread(scored)
    return stats


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref): exp(ref - lp) - (ref - lp) - 1, always >= 0.

    >>> k3_kl(torch.tensor([-1.0]), torch.tensor([-1.0]))
    tensor([0.])
    >>> bool(torch.isfinite(k3_kl(torch.tensor([-500.0]), torch.tensor([-0.1]))).all())  # log-ratio clamped before exp
    True
    """
    delta = (ref_logprobs - logprobs).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    return torch.exp(delta) - delta - 1


# ---- token-weight rules: the whole rollout's completion mask [N, T] -> per-token loss weights [N, T] -------------
# The loss is sum(per_token * weights), so any subset of rows, trimmed to fewer columns, adds its share exactly.

def seq_mean_token_mean(mask: torch.Tensor) -> torch.Tensor:
    """The paper (DeepSeekMath eq. 3): each completion weighs 1/N, shared equally by its tokens.

    >>> seq_mean_token_mean(torch.tensor([[1, 1], [1, 0]]))   # 1 / (2 tokens x 2 rows), 1 / (1 token x 2 rows)
    tensor([[0.2500, 0.2500],
            [0.5000, 0.0000]])
    """
    mask = mask.float()                                              # [N, T]
    return mask / (mask.sum(1, keepdim=True).clamp(min=1) * mask.size(0))


def token_mean(mask: torch.Tensor) -> torch.Tensor:
    """DAPO: every completion token of the rollout weighs the same, so long completions count for more.

    >>> token_mean(torch.tensor([[1, 1], [1, 0]]))                # 3 tokens in all
    tensor([[0.3333, 0.3333],
            [0.3333, 0.0000]])
    """
    mask = mask.float()                                              # [N, T]
    return mask / mask.sum().clamp(min=1)


def constant_length(mask: torch.Tensor, max_tokens: int) -> torch.Tensor:
    """Dr. GRPO: the token sum divided by N x a constant generation budget, whatever the completions' lengths.

    >>> constant_length(torch.tensor([[1, 1], [1, 0]]), max_tokens=4)   # 1 / (2 rows x 4 tokens)
    tensor([[0.1250, 0.1250],
            [0.1250, 0.0000]])
    """
    return mask.float() / (mask.size(0) * max_tokens)                # [N, T]


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              ref_logprobs: torch.Tensor | None = None, *, weights: torch.Tensor | None = None,
              clip_low: float = 0.2, clip_high: float = 0.2, kl_coef: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Clipped-surrogate GRPO loss over completion tokens, with an optional k3 KL penalty: sum(per_token * weights).

    logprobs, old_logprobs, ref_logprobs, mask, weights: [N, T]; advantages: [N]. `weights` come from a token-weight
    rule applied to the whole rollout (None: `seq_mean_token_mean(mask)`, these rows being the whole rollout).
    Returns (scalar loss, detached stats over the tokens in `mask`).

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
    weights = seq_mean_token_mean(mask) if weights is None else weights                # [N, T]
    adv = advantages.unsqueeze(1)                                                   # [N, 1]
    ratio = torch.exp((logprobs - old_logprobs).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))  # [N, T]
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high)                             # [N, T]
    per_token = -torch.minimum(ratio * adv, clipped * adv)                          # [N, T]
    stats = {}
    n_tokens = mask.sum().clamp(min=1)
    if ref_logprobs is not None and kl_coef != 0.0:
        kl = k3_kl(logprobs, ref_logprobs)                                          # [N, T]
        per_token = per_token + kl_coef * kl
        stats["kl"] = (kl.detach() * mask).sum() / n_tokens
    loss = (per_token * weights).sum()
    with torch.no_grad():
        stats["clip_frac_low"] = (((ratio < 1 - clip_low) & (adv < 0)).to(mask.dtype) * mask).sum() / n_tokens
        stats["clip_frac_high"] = (((ratio > 1 + clip_high) & (adv > 0)).to(mask.dtype) * mask).sum() / n_tokens
        stats["ratio_mean"] = (ratio * mask).sum() / n_tokens
        stats.setdefault("kl", torch.zeros((), dtype=logprobs.dtype))
    return loss, {k: v.detach() for k, v in stats.items()}


def gspo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              ref_logprobs: torch.Tensor | None = None, *, weights: torch.Tensor | None = None,
              clip_low: float = 3e-4, clip_high: float = 4e-4, kl_coef: float = 0.0) -> tuple[torch.Tensor, dict]:
    """GSPO (Zheng et al. 2025): one importance ratio per sequence, s_i = exp(mean over its tokens of (lp - old)),
    clipped to [1 - clip_low, 1 + clip_high]; each sequence's -min(s_i A_i, clip(s_i) A_i) is spread over its tokens
    and summed with `weights` like `grpo_loss` (with the paper's seq_mean_token_mean weights: the mean over
    sequences). The token gradient flows through the mean. Same arguments and statistics as `grpo_loss`, the clip
    fractions and ratio_mean counted per sequence.

    >>> lp = torch.tensor([[-1.0, -1.0], [-1.0, 0.0]]); old = torch.tensor([[-1.2, -1.0], [-1.0, 0.0]])
    >>> loss, stats = gspo_loss(lp, old, torch.tensor([1.0, -1.0]), torch.tensor([[1, 1], [1, 0]]), clip_high=0.2)
    >>> round(loss.item(), 4), round(stats["ratio_mean"].item(), 4)  # s = (e^0.1, 1): -(e^0.1 x 1 + 1 x -1) / 2
    (-0.0526, 1.0526)
    """
    mask = mask.to(logprobs.dtype)
    weights = seq_mean_token_mean(mask) if weights is None else weights                # [N, T]
    lengths = mask.sum(1).clamp(min=1)                                                  # [N]
    log_ratio = ((logprobs - old_logprobs) * mask).sum(1) / lengths                     # [N]
    ratio = torch.exp(log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))                    # [N] s_i
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high)                                  # [N]
    per_seq = -torch.minimum(ratio * advantages, clipped * advantages)                  # [N]
    per_token = per_seq.unsqueeze(1).expand_as(mask)                                    # [N, T]
    stats = {}
    if ref_logprobs is not None and kl_coef != 0.0:
        kl = k3_kl(logprobs, ref_logprobs)                                              # [N, T]
        per_token = per_token + kl_coef * kl
        stats["kl"] = (kl.detach() * mask).sum() / mask.sum().clamp(min=1)
    loss = (per_token * weights).sum()
    with torch.no_grad():
        rows = (mask.sum(1) > 0).to(mask.dtype)                                         # [N] sequences with tokens
        n_rows = rows.sum().clamp(min=1)
        stats["clip_frac_low"] = (((ratio < 1 - clip_low) & (advantages < 0)).to(mask.dtype) * rows).sum() / n_rows
        stats["clip_frac_high"] = (((ratio > 1 + clip_high) & (advantages > 0)).to(mask.dtype) * rows).sum() / n_rows
        stats["ratio_mean"] = (ratio * rows).sum() / n_rows
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
