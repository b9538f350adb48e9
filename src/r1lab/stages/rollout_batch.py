"""What one GRPO update works on: the packed rollout (`RolloutBatch`, its tensors [N, P + T] and [N, T]), the scored
samples of one or more sampling rounds (`Sampled`), and the small tensor functions between them: packing, the
policy's log-probs of completion tokens, the training order of rows, the sampler's log-probs and the mismatch
correction, inert rows that top up a micro-batch. r1lab.stages.grpo orchestrates them.
"""

from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch

from r1lab.maths.mismatch import correct
from r1lab.maths.rl import token_entropy, token_logprobs
from r1lab.rollout.engine import Completion

TOKEN_FIELDS = ("completion_mask", "weights", "old_logprobs", "ref_logprobs", "sampler_logprobs")  # [N, T] tensors


@dataclass(frozen=True)
class RolloutBatch:
    """The tensors one policy update needs; N = prompts x G completions, P prompt and T completion positions."""

    input_ids: torch.Tensor        # [N, P + T] left-padded prompt, then right-padded completion
    attention_mask: torch.Tensor   # [N, P + T]
    completion_mask: torch.Tensor  # [N, T] 1 on completion tokens that count in the loss
    advantages: torch.Tensor       # [N]
    weights: torch.Tensor          # [N, T] each token's weight in the loss, set over the whole rollout (loss_weights)
    old_logprobs: torch.Tensor | None = None  # [N, T] recorded at sampling time when mu > 1
    ref_logprobs: torch.Tensor | None = None  # [N, T] under the reference model when kl_coef > 0
    sampler_logprobs: torch.Tensor | None = None  # [N, T] the engine's, when a mismatch correction is on

    def _cut(self, rows, cols: slice = slice(None), t_cols: slice = slice(None)) -> "RolloutBatch":
        """Every tensor cut to `rows`, then to `cols` if it is [N, P + T] or to `t_cols` if it is [N, T]."""
        def cut(name: str, t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            t = t[rows]
            return t if t.ndim == 1 else t[:, t_cols if name in TOKEN_FIELDS else cols]
        return replace(self, **{f.name: cut(f.name, getattr(self, f.name)) for f in fields(self)})

    def select(self, idx: torch.Tensor) -> "RolloutBatch":
        return self._cut(idx)

    def to(self, device) -> "RolloutBatch":
        return replace(self, **{f.name: t.to(device) for f in fields(self) if (t := getattr(self, f.name)) is not None})

    def trimmed(self) -> "RolloutBatch":
        """The same rows without the columns that are padding in every one of them (prompts' left, completions' right).

        >>> ids, attn, cmask = pack_rollout([[5, 6], [7]], [[8], [9]], pad_id=0)
        >>> b = RolloutBatch(ids, attn, cmask, torch.zeros(2), cmask / 2).select(torch.tensor([1])).trimmed()
        >>> b.input_ids.tolist(), b.completion_mask.tolist(), b.weights.tolist()
        ([[7, 9]], [[1]], [[0.5]])
        """
        width = self.completion_mask.size(1)
        prompt_width = self.input_ids.size(1) - width
        used = self.attention_mask.bool().any(0)                                        # [P + T]
        first = int(used[:prompt_width].int().argmax()) if used[:prompt_width].any() else prompt_width
        tokens = used[prompt_width:].nonzero()
        keep = int(tokens[-1]) + 1 if len(tokens) else 1                                 # completion columns kept
        return self._cut(slice(None), slice(first, prompt_width + keep), slice(0, keep))

    def micro_batches(self, count: int) -> list["RolloutBatch"]:
        """`count` micro-batches of consecutive rows, each trimmed to its own longest prompt and completion."""
        return [self.select(idx).trimmed() for idx in torch.arange(self.input_ids.size(0), device=self.input_ids.device)
                .tensor_split(count)]


def pack_rollout(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int):
    """Left-pad prompts and right-pad completions into one [N, P + T] batch; returns (input_ids, attention_mask, completion_mask).

    >>> ids, attn, cmask = pack_rollout([[5, 6], [7]], [[8], [9, 10]], pad_id=0)
    >>> ids.tolist(), attn.tolist(), cmask.tolist()
    ([[5, 6, 8, 0], [0, 7, 9, 10]], [[1, 1, 1, 0], [0, 1, 1, 1]], [[1, 0], [1, 1]])
    """
    width_p, width_t = max(map(len, prompt_ids)), max(1, max(map(len, completion_ids)))
    rows, attn, cmask = [], [], []
    for p, c in zip(prompt_ids, completion_ids):
        rows.append([pad_id] * (width_p - len(p)) + p + c + [pad_id] * (width_t - len(c)))
        attn.append([0] * (width_p - len(p)) + [1] * (len(p) + len(c)) + [0] * (width_t - len(c)))
        cmask.append([1] * len(c) + [0] * (width_t - len(c)))
    return torch.tensor(rows), torch.tensor(attn), torch.tensor(cmask)


def completion_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, width: int, entropy: bool = False):
    """log p of the last `width` tokens given what precedes them ([N, width]), and optionally their entropy.

    Logits are computed only for those positions (`logits_to_keep`); position ids follow the left padding exactly
    as generation saw them.
    """
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)                                  # [N, L]
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   logits_to_keep=width + 1).logits[:, :-1]                                      # [N, T, V]
    logprobs = token_logprobs(logits, input_ids[:, -width:])
    return logprobs, (token_entropy(logits.detach()) if entropy else None)


def training_order(lengths: torch.Tensor, keep: torch.Tensor, n_micro: int) -> torch.Tensor:
    """Indices of the rows to train ([N] lengths and keep flags), shortest first so that each micro-batch pads to its
    own longest; left-out rows top them up to `n_micro`, so every micro-batch gets a row and DDP ranks run as many
    backward passes (those rows have advantage 0 and add nothing without a KL term).

    >>> training_order(torch.tensor([5.0, 2.0, 9.0, 1.0]), torch.tensor([True, False, True, False]), 3).tolist()
    [1, 0, 2]
    """
    keep = keep.clone()
    if keep.sum() < n_micro:
        keep[(~keep).nonzero().squeeze(1)[:n_micro - int(keep.sum())]] = True
    order = keep.nonzero().squeeze(1)
    return order[lengths[order].argsort(stable=True)]


def sampler_logprobs(completions: list[Completion], width: int, correction: Callable | None,
                     off_policy: bool = False) -> torch.Tensor | None:
    """[N, width] the engine's log-probs of the completions' tokens (0 past each one's end) when `correction` needs
    them, else None.

    >>> sampler_logprobs([Completion("", [4, 5], True, [-0.5, -1.0]), Completion("", [6], True, [-2.0])], 3, max)
    tensor([[-0.5000, -1.0000,  0.0000],
            [-2.0000,  0.0000,  0.0000]])
    """
    if correction is None and not off_policy:  # off-policy (max_staleness >= 1): the behaviour policy's
        return None
    for i, c in enumerate(completions):
        if c.logprobs is None or len(c.logprobs) != len(c.token_ids):
            raise ValueError(f"module.correction needs the engine's log-prob of every sampled token: completion {i} "
                             f"has {None if c.logprobs is None else len(c.logprobs)} for {len(c.token_ids)} tokens "
                             "(build the engine with logprobs=True)")
    return torch.tensor([c.logprobs + [0.0] * (width - len(c.logprobs)) for c in completions], dtype=torch.float)


def corrected(rollout: RolloutBatch, correction: Callable) -> tuple[RolloutBatch, dict[str, torch.Tensor]]:
    """The rollout with `correction`'s multiplier (r1lab.maths.mismatch) on its loss weights and its zeros out of the
    completion mask, and the correction's stats; needs old_logprobs and sampler_logprobs."""
    weights, stats = correct(correction, rollout.old_logprobs, rollout.sampler_logprobs, rollout.completion_mask)
    mask = rollout.completion_mask * (weights > 0).to(rollout.completion_mask.dtype)
    return replace(rollout, weights=rollout.weights * weights, completion_mask=mask), stats


def with_inert_rows(rollout: RolloutBatch, rows: int, pad_id: int) -> RolloutBatch:
    """The rollout topped up to `rows` rows with inert ones: every tensor 0 (advantage, mask, weights), the ids
    padding, one attended position, the last prompt column (a row without any would give NaN attention; a micro-batch
    of inert rows trims to that column and one completion column), so they add exactly 0 to the loss.

    >>> ids, attn, cmask = pack_rollout([[5]], [[8, 9]], pad_id=0)
    >>> b = with_inert_rows(RolloutBatch(ids, attn, cmask, torch.ones(1), cmask / 2), 2, pad_id=0)
    >>> b.input_ids.tolist(), b.attention_mask.tolist(), b.weights.tolist(), b.advantages.tolist()
    ([[5, 8, 9], [0, 0, 0]], [[1, 1, 1], [1, 0, 0]], [[0.5, 0.5], [0.0, 0.0]], [1.0, 0.0])
    """
    extra, prompt_width = rows - rollout.input_ids.size(0), rollout.input_ids.size(1) - rollout.completion_mask.size(1)
    if extra <= 0:
        return rollout

    def topped(name: str, t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        inert = torch.full((extra, *t.shape[1:]), pad_id if name == "input_ids" else 0, dtype=t.dtype, device=t.device)
        if name == "attention_mask":
            inert[:, prompt_width - 1] = 1
        return torch.cat([t, inert])
    return replace(rollout, **{f.name: topped(f.name, getattr(rollout, f.name)) for f in fields(rollout)})


@dataclass
class Sampled:
    """Scored completions of one or more sampling rounds: N = prompts x G rows, consecutive per prompt."""

    completions: list[Completion]
    columns: dict[str, list]          # the prompts' columns, one value per completion
    prompt_ids: list[list[int]]
    rewards: torch.Tensor             # [N] weighted totals, NaN where unjudged
    per_reward: dict[str, list]       # name -> raw values
    errors: int                       # checker errors
    gen_time: float                   # seconds spent sampling

    def __add__(self, other: "Sampled") -> "Sampled":
        n, m = len(self.completions), len(other.completions)
        join = lambda a, b: {k: a.get(k, [None] * n) + b.get(k, [None] * m) for k in dict.fromkeys([*a, *b])}  # noqa: E731
        return Sampled(self.completions + other.completions, join(self.columns, other.columns),
                       self.prompt_ids + other.prompt_ids, torch.cat([self.rewards, other.rewards]),
                       join(self.per_reward, other.per_reward), self.errors + other.errors,
                       self.gen_time + other.gen_time)

    def groups(self, idx: list[int], group_size: int) -> "Sampled":
        """The rows of groups `idx` (each `group_size` consecutive rows), in that order."""
        rows = [g * group_size + j for g in idx for j in range(group_size)]
        pick = lambda values: [values[i] for i in rows]  # noqa: E731
        return Sampled(pick(self.completions), {k: pick(v) for k, v in self.columns.items()}, pick(self.prompt_ids),
                       self.rewards[rows], {k: pick(v) for k, v in self.per_reward.items()}, self.errors,
                       self.gen_time)
