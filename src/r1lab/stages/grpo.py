"""GRPOModule: Group Relative Policy Optimisation (DeepSeekMath; the RL of R1-Zero and R1's RL stages).

Each training step: render a batch of prompts with the template, sample G completions per prompt with the rollout
engine, score them with the configured rewards, turn rewards into group-relative advantages, weigh every token once
over the whole rollout (`loss_weights`, so micro-batch losses simply add up), and optimise the clipped surrogate
(`r1lab.maths.rl.grpo_loss`) for `mu` inner iterations. No critic; a reference model exists only when kl_coef > 0.
Run it with `python -m r1lab.train experiment=r1_zero` (or `reasoning_rl`).

Simplifications: one rollout batch per optimiser step (R1 split each rollout into 16 minibatches; here `mu` repeats
the whole batch); prompts are split across DDP ranks and every group stays on one rank, so advantages never need a
cross-rank gather.
"""

import time
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass, fields, replace
from functools import partial

import lightning as L
import torch
import torch.nn.functional as F

from r1lab.infra.deepspeed import copy_weights, deepspeed_engine, gathered_for_generation, is_zero3, start_micro_batch
from r1lab.infra.hf import check_model_dir, load_model, load_tokenizer
from r1lab.maths.formats import Template, reasoning_of
from r1lab.maths.metrics import is_mixed, mean
from r1lab.maths.rewards import check_failures, language_consistency, weighted_rewards
from r1lab.maths.rl import (
    group_advantages,
    grpo_loss,
    rollout_stats,
    seq_mean_token_mean,
    token_entropy,
    token_logprobs,
    unjudged_groups,
    zero_variance_groups,
)
from r1lab.rollout.engine import Completion, SamplingConfig

TOKEN_FIELDS = ("completion_mask", "weights", "old_logprobs", "ref_logprobs")  # RolloutBatch's [N, T] tensors


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


class GRPOModule(L.LightningModule):
    """GRPO on a causal LM. `sampling` draws the G = `sampling.n` completions of each training prompt, `val_sampling`
    the held-out ones; `template` renders the prompts; `loss_weights` maps the whole rollout's completion mask [N, T]
    to each token's weight in the loss (r1lab.maths.rl: seq_mean_token_mean, token_mean, constant_length)."""

    def __init__(self, model_path: str, optimizer: partial, rewards: dict, template: Template, rollout: partial,
                 sampling: SamplingConfig, val_sampling: SamplingConfig,
                 loss_weights: Callable[[torch.Tensor], torch.Tensor] = seq_mean_token_mean,
                 scheduler: partial | None = None, dtype: str = "float32", mu: int = 1, kl_coef: float = 0.0,
                 clip_low: float = 0.2, clip_high: float = 0.2, scale_by_std: bool = True,
                 ref_refresh_steps: int | None = None, mask_truncated: bool = False, drop_zero_variance: bool = True,
                 micro_batch_size: int = 64, max_grad_norm: float | None = 1.0, val_reward: str = "accuracy",
                 log_completions_every: int = 10, language: str = "en", gradient_checkpointing: bool = False):
        super().__init__()
        self.save_hyperparameters(logger=False)
        check_model_dir(model_path)
        self.automatic_optimization = False
        self.model = self.ref_model = self.tokenizer = self.engine = None

    def configure_model(self) -> None:
        if self.model is not None:
            return
        self.model = load_model(self.hparams.model_path, self.hparams.dtype)
        self.tokenizer = load_tokenizer(self.hparams.model_path)
        if self.hparams.kl_coef > 0:  # under ZeRO-3 a copy of partitioned parameters is no model: load it again
            zero3 = is_zero3(self.model)
            ref = load_model(self.hparams.model_path, self.hparams.dtype) if zero3 else deepcopy(self.model)
            self.ref_model = ref.eval().requires_grad_(False)
        if self.hparams.gradient_checkpointing:  # active in training mode only: generation keeps its KV cache
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.engine = self.hparams.rollout(model=self.model, tokenizer=self.tokenizer)

    def on_train_start(self) -> None:
        if self.trainer.ckpt_path:  # resumed: the engine was built before the checkpoint's weights were loaded
            self.engine.update_weights(self.model)

    # ---- rollout: sample, score, pack -------------------------------------------------------------------------
    def _sample(self, batch: dict[str, list], sampling: SamplingConfig):
        """`sampling.n` completions per prompt, flat [prompts x n], with the batch's columns and the prompts' token ids
        repeated to match."""
        n = sampling.n
        prompts = [self.hparams.template.render(p, tokenizer=self.tokenizer) for p in batch["prompt"]]
        gather = getattr(self.engine, "uses_training_weights", False)  # HF generate: the training model's weights
        with gathered_for_generation(self.model, deepspeed_engine(self), enabled=gather):  # whole under ZeRO-3
            groups = self.engine.generate(prompts, sampling)                              # [prompts][n]
        completions = [c for group in groups for c in group]
        columns = {k: [v for v in values for _ in range(n)] for k, values in batch.items()}
        prompt_ids = [ids for ids in self.tokenizer(prompts, add_special_tokens=False).input_ids for _ in range(n)]
        return completions, columns, prompt_ids

    def _score(self, texts: list[str], columns: dict[str, list]) -> tuple[torch.Tensor, dict[str, list], int]:
        """Every reward on every completion: (weighted total per completion [N], NaN where a completion could not be
        judged; name -> raw values; checker errors, unjudged gold answers included)."""
        failures = check_failures()
        total, per_reward = weighted_rewards(self.hparams.rewards, texts, columns, step=self.global_step)
        rewards = torch.tensor([float("nan") if t is None else t for t in total])             # [N]
        return rewards, per_reward, check_failures() - failures

    def _pack(self, prompt_ids: list[list[int]], completions: list[Completion], rewards: torch.Tensor,
              lengths: torch.Tensor) -> tuple[RolloutBatch, int]:
        """The rows to train, on the module's device, and how many micro-batches. Advantages and loss weights are
        computed over the whole rollout first; then groups with an unjudged (NaN) reward are left out, and so are
        groups whose rewards are all equal under `drop_zero_variance`: their advantages are 0, so without a KL term
        they add nothing to the gradient."""
        hp, G, N = self.hparams, self.hparams.sampling.n, len(completions)
        input_ids, attention_mask, completion_mask = pack_rollout(prompt_ids, [c.token_ids for c in completions],
                                                                  self.tokenizer.pad_token_id)
        if hp.mask_truncated:
            completion_mask = completion_mask * torch.tensor([c.finished for c in completions]).unsqueeze(1)
        advantages = group_advantages(rewards, G, scale_by_std=hp.scale_by_std)                       # [N]
        whole = RolloutBatch(input_ids, attention_mask, completion_mask, advantages, hp.loss_weights(completion_mask))
        n_micro = -(-N // hp.micro_batch_size)
        left_out = unjudged_groups(rewards, G)                                                        # [P]
        if hp.drop_zero_variance:
            left_out |= zero_variance_groups(rewards, G)
        keep = ~left_out.repeat_interleave(G)                                                         # [N]
        return whole.to(self.device).select(training_order(lengths, keep, n_micro).to(self.device)), n_micro

    def _with_logprobs(self, rollout: RolloutBatch, n_micro: int) -> RolloutBatch:
        """The rollout with the policy's log-probs at sampling time (mu > 1) and the reference's (kl_coef > 0)."""
        if self.hparams.mu > 1:
            rollout = replace(rollout, old_logprobs=self._logprobs_in_chunks(self.model, rollout, n_micro))
        if self.ref_model is not None:
            rollout = replace(rollout, ref_logprobs=self._logprobs_in_chunks(self.ref_model, rollout, n_micro))
        return rollout

    @torch.no_grad()
    def _rollout(self, batch: dict[str, list]) -> tuple[RolloutBatch, int, dict[str, torch.Tensor]]:
        """Sample, score and pack one rollout: (the rows to train, sorted by length; how many micro-batches; stats)."""
        hp = self.hparams
        seed = hp.sampling.seed + self.global_step * self.trainer.world_size + self.global_rank
        start = time.perf_counter()
        completions, columns, prompt_ids = self._sample(batch, replace(hp.sampling, seed=seed))
        gen_time = time.perf_counter() - start
        texts = [c.text for c in completions]
        rewards, per_reward, errors = self._score(texts, columns)                              # [N]
        lengths = torch.tensor([len(c.token_ids) for c in completions], dtype=torch.float)     # [N]
        finished = torch.tensor([c.finished for c in completions])                             # [N]
        stats = rollout_stats(rewards, lengths, finished, hp.sampling.n, per_reward, columns.get("kind"))
        stats |= {"gen_tokens_per_s": lengths.sum() / gen_time,
                  "reward_errors": torch.tensor(float(errors)),  # checker errors, timeouts, unjudged golds
                  "lang_mix": torch.tensor(mean([is_mixed(language_consistency(reasoning_of(t), hp.language))
                                                 for t in texts]))}
        self._maybe_log_completions(texts, rewards.tolist(), columns)
        rollout, n_micro = self._pack(prompt_ids, completions, rewards, lengths)
        stats["trained_frac"] = torch.tensor(rollout.input_ids.size(0) / len(texts))
        return self._with_logprobs(rollout, n_micro), n_micro, stats

    def _logprobs_in_chunks(self, model, rollout: RolloutBatch, n_micro: int) -> torch.Tensor:
        """[N, T] log-probs of the rollout's completion tokens, computed per trimmed micro-batch, zero past each row's width."""
        width, chunks = rollout.completion_mask.size(1), []
        for mb in rollout.micro_batches(n_micro):
            mb_width = mb.completion_mask.size(1)
            logprobs = completion_logprobs(model, mb.input_ids, mb.attention_mask, mb_width)[0]   # [n, mb_width]
            chunks.append(F.pad(logprobs, (0, width - mb_width)))
        return torch.cat(chunks)

    # ---- update -----------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, list], batch_idx: int) -> None:
        hp = self.hparams
        rollout, n_micro, stats = self._rollout(batch)
        stats.update(self._optimise(rollout, n_micro))
        if self.lr_schedulers() is not None:
            self.lr_schedulers().step()
        if hp.ref_refresh_steps and self.ref_model is not None and (self.global_step + 1) % hp.ref_refresh_steps == 0:
            copy_weights(self.model, self.ref_model)
        self.log("train/reward_mean", stats.pop("reward_mean"), prog_bar=True, on_step=True, on_epoch=False)
        self.log_dict({f"train/{k}": v for k, v in stats.items()}, on_step=True, on_epoch=False,
                      batch_size=len(batch["prompt"]))

    def _micro_batch_loss(self, mb: RolloutBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """This micro-batch's share of the rollout's loss (its rows carry their loss weights), and its statistics."""
        hp, width = self.hparams, mb.completion_mask.size(1)
        logprobs, entropy = completion_logprobs(self.model, mb.input_ids, mb.attention_mask, width, entropy=True)
        old = mb.old_logprobs if mb.old_logprobs is not None else logprobs.detach()
        loss, stats = grpo_loss(logprobs, old, mb.advantages, mb.completion_mask, mb.ref_logprobs, weights=mb.weights,
                                clip_low=hp.clip_low, clip_high=hp.clip_high, kl_coef=hp.kl_coef)
        mask = mb.completion_mask.float()
        stats["entropy"] = (entropy * mask).sum() / mask.sum().clamp(min=1)
        return loss, stats

    def _optimise(self, rollout: RolloutBatch, n_micro: int) -> dict[str, torch.Tensor]:
        """`mu` optimiser steps on the rollout's rows in `n_micro` micro-batches, whose losses add up to the rollout's
        (dropped rows add 0); the statistics are means over the trained rows."""
        hp, opt = self.hparams, self.optimizers()
        start, sums, rows, loss_sum = time.perf_counter(), {}, 0, 0.0
        ds_engine = deepspeed_engine(self)
        micro_batches = rollout.micro_batches(n_micro)
        for _ in range(hp.mu):
            opt.zero_grad()
            for i, mb in enumerate(micro_batches):
                start_micro_batch(ds_engine, last=i == len(micro_batches) - 1)  # DeepSpeed: accumulate, step at last
                loss, stats = self._micro_batch_loss(mb)
                self.manual_backward(loss)
                n = mb.input_ids.size(0)
                loss_sum, rows = loss_sum + float(loss), rows + n
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * n
            if hp.max_grad_norm:
                self.clip_gradients(opt, gradient_clip_val=hp.max_grad_norm, gradient_clip_algorithm="norm")
            opt.step()
        self.engine.update_weights(self.model)
        out = {k: v / max(rows, 1) for k, v in sums.items()} | {"loss": loss_sum / hp.mu}
        out["train_tokens_per_s"] = float(rollout.attention_mask.sum() * hp.mu) / (time.perf_counter() - start)
        return {k: torch.tensor(v) for k, v in out.items()}

    # ---- held-out accuracy ------------------------------------------------------------------------------------
    def validation_step(self, batch: dict[str, list], batch_idx: int) -> None:
        hp = self.hparams
        sampling = replace(hp.val_sampling, seed=hp.val_sampling.seed + batch_idx)
        completions, columns, _ = self._sample(batch, sampling)
        fn = hp.rewards[hp.val_reward]["fn"]   # its weight, kinds and schedule do not apply here
        scores = [0.0 if s is None else s for s in fn([c.text for c in completions], **columns)]
        self.log("val/pass@1", sum(scores) / len(scores), on_epoch=True, prog_bar=True, batch_size=len(scores),
                 sync_dist=True)

    def _maybe_log_completions(self, texts: list[str], rewards: list[float], columns: dict[str, list]) -> None:
        every = self.hparams.log_completions_every
        if not every or self.global_step % every or self.global_rank != 0:
            return
        from aim import Text
        from aim.pytorch_lightning import AimLogger

        shown = "\n\n".join(f"[reward {r:.2f} | gold {a}]\n{p}\n--> {t}"
                            for p, a, t, r in list(zip(columns["prompt"], columns["answer"], texts, rewards))[:4])
        for logger in self.loggers:
            if isinstance(logger, AimLogger):
                logger.experiment.track(Text(shown), name="completions", step=self.global_step, context={"subset": "train"})

    def configure_optimizers(self):
        optimizer = self.hparams.optimizer(params=[p for p in self.model.parameters() if p.requires_grad])
        if self.hparams.scheduler is None:
            return optimizer
        scheduler = self.hparams.scheduler(optimizer=optimizer, total_steps=self.trainer.estimated_stepping_batches)
        return [optimizer], [scheduler]
