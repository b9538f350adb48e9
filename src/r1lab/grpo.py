"""GRPOModule: Group Relative Policy Optimisation (DeepSeekMath; the RL of R1-Zero and R1's RL stages).

Each training step: render a batch of prompts, sample G completions per prompt with the rollout engine, score them
with the configured rewards, turn rewards into group-relative advantages, and optimise the clipped surrogate
(`r1lab.rl.grpo_loss`) for `mu` inner iterations. No critic; a reference model exists only when kl_coef > 0.
Run it with `python -m r1lab.train experiment=r1_zero` (or `reasoning_rl`).

Simplifications: one rollout batch per optimiser step (R1 split each rollout into 16 minibatches; here `mu` repeats
the whole batch); prompts are split across DDP ranks and every group stays on one rank, so advantages never need a
cross-rank gather.
"""

import time
from copy import deepcopy
from dataclasses import dataclass
from functools import partial

import lightning as L
import torch
import torch.nn.functional as F

from r1lab.deepspeed_utils import copy_weights, deepspeed_engine, gathered_for_generation, is_zero3, start_micro_batch
from r1lab.formats import reasoning_of
from r1lab.hf import check_model_dir, load_model, load_tokenizer
from r1lab.metrics import is_mixed, mean
from r1lab.rewards import check_failures, language_consistency, weighted_rewards
from r1lab.rl import group_advantages, grpo_loss, token_entropy, token_logprobs
from r1lab.rollout import SamplingConfig


@dataclass
class RolloutBatch:
    """The tensors one policy update needs; N = prompts x G completions, P prompt and T completion positions."""

    input_ids: torch.Tensor        # [N, P + T] left-padded prompt, then right-padded completion
    attention_mask: torch.Tensor   # [N, P + T]
    completion_mask: torch.Tensor  # [N, T] 1 on completion tokens that count in the loss
    advantages: torch.Tensor       # [N]
    old_logprobs: torch.Tensor | None = None  # [N, T] recorded at sampling time when mu > 1
    ref_logprobs: torch.Tensor | None = None  # [N, T] under the reference model when kl_coef > 0

    def select(self, idx: torch.Tensor) -> "RolloutBatch":
        pick = lambda t: None if t is None else t[idx]
        return RolloutBatch(*(pick(getattr(self, f)) for f in self.__dataclass_fields__))

    def trimmed(self) -> "RolloutBatch":
        """The same rows without the columns that are padding in every one of them (prompts' left, completions' right).

        >>> ids, attn, cmask = pack_rollout([[5, 6], [7]], [[8], [9]], pad_id=0)
        >>> b = RolloutBatch(ids, attn, cmask, torch.zeros(2)).select(torch.tensor([1])).trimmed()
        >>> b.input_ids.tolist(), b.completion_mask.tolist()
        ([[7, 9]], [[1]])
        """
        width = self.completion_mask.size(1)
        prompt_width = self.input_ids.size(1) - width
        used = self.attention_mask.bool().any(0)                                        # [P + T]
        first = int(used[:prompt_width].int().argmax()) if used[:prompt_width].any() else prompt_width
        tokens = used[prompt_width:].nonzero()
        keep = int(tokens[-1]) + 1 if len(tokens) else 1                                 # completion columns kept
        cols, t_cols = slice(first, prompt_width + keep), slice(0, keep)
        cut = lambda t, c: None if t is None else t[:, c]
        return RolloutBatch(self.input_ids[:, cols], self.attention_mask[:, cols], self.completion_mask[:, t_cols],
                            self.advantages, cut(self.old_logprobs, t_cols), cut(self.ref_logprobs, t_cols))

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


def micro_batch_weight(aggregation: str, mb_mask: torch.Tensor, full_mask: torch.Tensor) -> float:
    """Factor that makes the sum of micro-batch losses equal the loss of the whole batch under `aggregation`.

    `mb_mask` [n, t] may hold a subset of `full_mask`'s [N, T] rows, trimmed to fewer columns (t <= T)."""
    if aggregation == "token_mean":
        return (mb_mask.sum() / full_mask.sum().clamp(min=1)).item()
    if aggregation == "seq_mean_token_sum_norm":   # sum / (n * t) -> sum / (N * T)
        return mb_mask.numel() / full_mask.numel()
    return mb_mask.size(0) / full_mask.size(0)


class GRPOModule(L.LightningModule):
    def __init__(self, model_path: str, optimizer: partial, rewards: dict, prompt_template: partial, rollout: partial,
                 scheduler: partial | None = None, dtype: str = "float32", num_generations: int = 8,
                 temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 128, mu: int = 1,
                 kl_coef: float = 0.0, clip_low: float = 0.2, clip_high: float = 0.2,
                 aggregation: str = "seq_mean_token_mean", scale_by_std: bool = True, ref_refresh_steps: int | None = None,
                 mask_truncated: bool = False, drop_zero_variance: bool = False, micro_batch_size: int = 64,
                 max_grad_norm: float | None = 1.0, val_reward: str = "accuracy", val_samples: int = 1,
                 val_temperature: float = 0.6, log_completions_every: int = 10, seed: int = 0,
                 language: str = "en"):
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
        self.engine = self.hparams.rollout(model=self.model, tokenizer=self.tokenizer)

    def on_train_start(self) -> None:
        if self.trainer.ckpt_path:  # resumed: the engine was built before the checkpoint's weights were loaded
            self.engine.update_weights(self.model)

    # ---- rollout: sample, score, advantages -------------------------------------------------------------------
    def _sample(self, batch: dict[str, list], n: int, temperature: float, seed: int):
        prompts = [self.hparams.prompt_template(p, tokenizer=self.tokenizer) for p in batch["prompt"]]
        sampling = SamplingConfig(n=n, temperature=temperature, top_p=self.hparams.top_p,
                                  max_new_tokens=self.hparams.max_new_tokens, seed=seed)
        gather = getattr(self.engine, "uses_training_weights", False)  # HF generate: the training model's weights
        with gathered_for_generation(self.model, deepspeed_engine(self), enabled=gather):  # whole under ZeRO-3
            groups = self.engine.generate(prompts, sampling)                              # [prompts][n]
        completions = [c for group in groups for c in group]
        columns = {k: [v for v in values for _ in range(n)] for k, values in batch.items()}
        prompt_ids = [ids for ids in self.tokenizer(prompts, add_special_tokens=False).input_ids for _ in range(n)]
        return completions, columns, prompt_ids

    @torch.no_grad()
    def _rollout(self, batch: dict[str, list]) -> tuple[RolloutBatch, torch.Tensor, int, dict]:
        """Sample, score and pack: (rows to train sorted by length, the whole rollout's completion mask [N, T] that
        normalises the loss, how many micro-batches, stats). Zero-variance groups are left out under
        `drop_zero_variance`: their advantages are 0, so without a KL term they add nothing to the gradient."""
        hp, G = self.hparams, self.hparams.num_generations
        seed = hp.seed + self.global_step * self.trainer.world_size + self.global_rank
        start = time.perf_counter()
        completions, columns, prompt_ids = self._sample(batch, G, hp.temperature, seed)
        gen_time = time.perf_counter() - start
        texts = [c.text for c in completions]
        failures = check_failures()
        total, per_reward = weighted_rewards(hp.rewards, texts, columns, step=self.global_step)
        rewards = torch.tensor(total)                                                      # [N]
        advantages = group_advantages(rewards, G, scale_by_std=hp.scale_by_std)            # [N]
        lengths = torch.tensor([len(c.token_ids) for c in completions], dtype=torch.float)
        finished = torch.tensor([c.finished for c in completions])
        zero_var = rewards.view(-1, G).std(dim=1) == 0 if G > 1 else torch.ones(len(rewards) // G, dtype=torch.bool)
        stats = {"reward_mean": rewards.mean(), "reward_std": rewards.std() if len(rewards) > 1 else torch.tensor(0.0),
                 "completion_len_mean": lengths.mean(), "completion_len_max": lengths.max(),
                 "truncated_frac": (~finished).float().mean(), "zero_variance_frac": zero_var.float().mean(),
                 "gen_tokens_per_s": lengths.sum() / gen_time,
                 "reward_errors": torch.tensor(float(check_failures() - failures)),  # checker errors and timeouts
                 "lang_mix": torch.tensor(mean([is_mixed(language_consistency(reasoning_of(t), hp.language))
                                                for t in texts]))}
        for kind in sorted({k for k in columns.get("kind", []) if k is not None}):  # per kind: each gets other rewards
            stats[f"reward_mean_{kind}"] = rewards[torch.tensor([k == kind for k in columns["kind"]])].mean()
        for name, values in per_reward.items():
            scored = torch.tensor([v for v in values if v is not None], dtype=torch.float)
            if len(scored):
                stats[f"rewards/{name}_mean"] = scored.mean()
                stats[f"rewards/{name}_std"] = scored.std() if len(scored) > 1 else torch.tensor(0.0)
        self._maybe_log_completions(texts, total, columns)
        input_ids, attention_mask, completion_mask = pack_rollout(prompt_ids, [c.token_ids for c in completions],
                                                                  self.tokenizer.pad_token_id)
        if hp.mask_truncated:
            completion_mask = completion_mask * finished.unsqueeze(1)
        dev = self.device
        full_mask = completion_mask.to(dev)   # the loss is normalised over the whole rollout, dropped rows too
        n_micro = -(-len(texts) // hp.micro_batch_size)
        keep = ~zero_var.repeat_interleave(G) if hp.drop_zero_variance else torch.ones(len(texts), dtype=torch.bool)
        if keep.sum() < n_micro:  # every micro-batch gets a row, so DDP ranks run as many backwards (these add 0)
            keep[(~keep).nonzero().squeeze(1)[:n_micro - int(keep.sum())]] = True
        order = keep.nonzero().squeeze(1)
        order = order[lengths[order].argsort(stable=True)]   # by length: each micro-batch pads to its own longest
        rollout = RolloutBatch(*(t.to(dev) for t in (input_ids, attention_mask, completion_mask, advantages)))
        rollout = rollout.select(order.to(dev))
        if hp.mu > 1:
            rollout.old_logprobs = self._logprobs_in_chunks(self.model, rollout, n_micro)
        if self.ref_model is not None:
            rollout.ref_logprobs = self._logprobs_in_chunks(self.ref_model, rollout, n_micro)
        stats["trained_frac"] = torch.tensor(len(order) / len(texts))
        return rollout, full_mask, n_micro, stats

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
        rollout, full_mask, n_micro, stats = self._rollout(batch)
        stats.update(self._optimise(rollout, full_mask, n_micro))
        if self.lr_schedulers() is not None:
            self.lr_schedulers().step()
        if hp.ref_refresh_steps and self.ref_model is not None and (self.global_step + 1) % hp.ref_refresh_steps == 0:
            copy_weights(self.model, self.ref_model)
        self.log("train/reward_mean", stats.pop("reward_mean"), prog_bar=True, on_step=True, on_epoch=False)
        self.log_dict({f"train/{k}": v for k, v in stats.items()}, on_step=True, on_epoch=False,
                      batch_size=len(batch["prompt"]))

    def _optimise(self, rollout: RolloutBatch, full_mask: torch.Tensor, n_micro: int) -> dict[str, torch.Tensor]:
        """`mu` optimiser steps on the rollout's rows in `n_micro` micro-batches; `full_mask` [N, T] is the completion
        mask of the whole rollout, dropped rows included, over which the loss is normalised."""
        hp, opt = self.hparams, self.optimizers()
        start, sums, weights = time.perf_counter(), {}, 0.0
        ds_engine = deepspeed_engine(self)
        micro_batches = rollout.micro_batches(n_micro)
        for _ in range(hp.mu):
            opt.zero_grad()
            for i, mb in enumerate(micro_batches):
                start_micro_batch(ds_engine, last=i == len(micro_batches) - 1)  # DeepSpeed: accumulate, step at last
                width = mb.completion_mask.size(1)
                logprobs, entropy = completion_logprobs(self.model, mb.input_ids, mb.attention_mask, width, entropy=True)
                old = mb.old_logprobs if mb.old_logprobs is not None else logprobs.detach()
                loss, stats = grpo_loss(logprobs, old, mb.advantages, mb.completion_mask, mb.ref_logprobs,
                                        clip_low=hp.clip_low, clip_high=hp.clip_high, kl_coef=hp.kl_coef,
                                        aggregation=hp.aggregation)
                weight = micro_batch_weight(hp.aggregation, mb.completion_mask, full_mask)
                self.manual_backward(loss * weight)
                mask = mb.completion_mask.float()
                stats.update(loss=loss.detach(), entropy=(entropy * mask).sum() / mask.sum().clamp(min=1))
                weights += weight
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * weight
            if hp.max_grad_norm:
                self.clip_gradients(opt, gradient_clip_val=hp.max_grad_norm, gradient_clip_algorithm="norm")
            opt.step()
        self.engine.update_weights(self.model)
        trained_tokens = rollout.attention_mask.sum() * hp.mu
        out = {k: v / max(weights, 1e-12) for k, v in sums.items()}   # stats: means over the trained rows
        out["loss"] = sums["loss"] / hp.mu                 # the whole batch's loss (dropped rows add 0)
        out["train_tokens_per_s"] = float(trained_tokens) / (time.perf_counter() - start)
        return {k: torch.tensor(v) for k, v in out.items()}

    # ---- held-out accuracy ------------------------------------------------------------------------------------
    def validation_step(self, batch: dict[str, list], batch_idx: int) -> None:
        hp = self.hparams
        completions, columns, _ = self._sample(batch, hp.val_samples, hp.val_temperature, hp.seed + batch_idx)
        fn, _weight = self._reward_spec(hp.val_reward)
        scores = [0.0 if s is None else s for s in fn([c.text for c in completions], **columns)]
        self.log("val/pass@1", sum(scores) / len(scores), on_epoch=True, prog_bar=True, batch_size=len(scores),
                 sync_dist=True)

    def _reward_spec(self, name: str):
        spec = self.hparams.rewards[name]
        return spec["fn"], spec.get("weight", 1.0)

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
