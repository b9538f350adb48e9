"""GRPOModule: Group Relative Policy Optimisation (DeepSeekMath; the RL of R1-Zero and R1's RL stages).

Each training step: render a batch of prompts with the template, sample G completions per prompt with the rollout
engine, score them with the configured rewards, turn rewards into group-relative advantages (`advantages`), weigh
every token once over the whole rollout (`loss_weights`, so micro-batch losses simply add up), and optimise the
clipped surrogate (`loss`) for `mu` inner iterations. No critic; a reference model exists only when kl_coef > 0.
Run it with `python -m r1lab.train experiment=r1_zero` (or `reasoning_rl`).
The RL menu plugs in as components (configs/module/*/, the README's table): advantages (GRPO, RLOO, Dr. GRPO), losses
(GRPO, GSPO), a train/inference mismatch `correction` (TIS, IcePop, sequence mask), DAPO's `dynamic_sampling`, LoRA
(`peft`), and `max_staleness` >= 1, which samples the next batches in the background (r1lab.rollout.overlap).
The tensors of an update live in r1lab.stages.rollout_batch.

Simplifications: one rollout batch per optimiser step (R1 split each rollout into 16 minibatches; here `mu` repeats
the whole batch); prompts are split across DDP ranks and every group stays on one rank, so advantages never need a
cross-rank gather.
"""

import time
from collections.abc import Callable
from copy import deepcopy
from dataclasses import replace
from functools import partial

import lightning as L
import torch
import torch.nn.functional as F

from r1lab.data.prompt_stream import PromptStream
from r1lab.infra.deepspeed import copy_weights, deepspeed_engine, gathered_for_generation, is_zero3, start_micro_batch
from r1lab.infra.hf import check_model_dir, load_model, load_tokenizer
from r1lab.infra.peft import AdaptersDisabled, LoraConfig, apply_peft
from r1lab.maths.dynamic_sampling import DynamicSampling, first_informative, round_seed
from r1lab.maths.formats import Template
from r1lab.maths.metrics import behaviour
from r1lab.maths.rewards import check_failures, weighted_rewards
from r1lab.maths.rl import (
    group_advantages,
    grpo_loss,
    rollout_stats,
    seq_mean_token_mean,
    unjudged_groups,
    zero_variance_groups,
)
from r1lab.rollout.engine import Completion, SamplingConfig
from r1lab.rollout.overlap import OverlappedRollout, rollout_seed, staleness
from r1lab.stages.rollout_batch import (
    RolloutBatch,
    Sampled,
    completion_logprobs,
    corrected,
    pack_rollout,
    sampler_logprobs,
    training_order,
    with_inert_rows,
)


class GRPOModule(L.LightningModule):
    """GRPO on a causal LM. `sampling` draws the G = `sampling.n` completions of each training prompt, `val_sampling`
    the held-out ones; `template` renders the prompts; `loss_weights` maps the whole rollout's completion mask [N, T]
    to each token's weight in the loss (r1lab.maths.rl: seq_mean_token_mean, token_mean, constant_length)."""

    def __init__(self, model_path: str, optimizer: partial, rewards: dict, template: Template, rollout: partial,
                 sampling: SamplingConfig, val_sampling: SamplingConfig,
                 loss_weights: Callable[[torch.Tensor], torch.Tensor] = seq_mean_token_mean,
                 scheduler: partial | None = None, dtype: str = "float32", mu: int = 1, kl_coef: float = 0.0,
                 advantages: Callable = group_advantages, loss: Callable = grpo_loss, correction: Callable | None = None,
                 ref_refresh_steps: int | None = None, mask_truncated: bool = False, drop_zero_variance: bool = True,
                 micro_batch_size: int = 64, max_grad_norm: float | None = 1.0, val_reward: str = "accuracy",
                 log_completions_every: int = 10, language: str = "en", gradient_checkpointing: bool = False,
                 peft: LoraConfig | None = None, dynamic_sampling: DynamicSampling | None = None,
                 max_staleness: int = 0):
        super().__init__()
        self.save_hyperparameters(logger=False)
        check_model_dir(model_path)
        self.automatic_optimization = False
        self.model = self.ref_model = self.tokenizer = self.engine = None
        self.prompt_stream, self._stream_state = None, None   # DAPO dynamic sampling's extra prompts
        self._overlap_state = None                            # in-flight batches of a resumed off-policy run

    def configure_model(self) -> None:
        if self.model is not None:
            return
        self.model = apply_peft(load_model(self.hparams.model_path, self.hparams.dtype), self.hparams.peft)
        self.tokenizer = load_tokenizer(self.hparams.model_path)
        if self.hparams.kl_coef > 0 and self.hparams.peft is not None:  # the reference is the base: no copy
            if self.hparams.ref_refresh_steps:
                raise ValueError("module.ref_refresh_steps needs a full reference copy; with module/peft=lora the "
                                 "reference is the frozen base model (adapters off): set module.ref_refresh_steps=null")
            self.ref_model = AdaptersDisabled(self.model)
        elif self.hparams.kl_coef > 0:  # under ZeRO-3 a copy of partitioned parameters is no model: load it again
            zero3 = is_zero3(self.model)
            ref = load_model(self.hparams.model_path, self.hparams.dtype) if zero3 else deepcopy(self.model)
            self.ref_model = ref.eval().requires_grad_(False)
        if self.hparams.gradient_checkpointing:  # active in training mode only: generation keeps its KV cache
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        off_policy = self.hparams.max_staleness > 0
        logprobs = {"logprobs": True} if self.hparams.correction is not None or off_policy else {}  # the sampler's
        self.engine = self.hparams.rollout(model=self.model, tokenizer=self.tokenizer, **logprobs)
        if off_policy:
            self.engine = self._overlapped(self.engine)

    def _overlapped(self, engine) -> OverlappedRollout:
        """max_staleness >= 1: the engine samples in a background thread with weights of its own
        (r1lab.rollout.overlap): vLLM holds a copy already; HF generate gets a copy of the policy."""
        if not getattr(engine, "uses_training_weights", False):
            return OverlappedRollout(engine, engine.update_weights, self.hparams.max_staleness)
        if is_zero3(self.model):
            raise ValueError("module.max_staleness >= 1 with rollout=hf copies the policy to sample with; under "
                             "ZeRO-3 use rollout=vllm (it holds its own weights)")
        sampler = deepcopy(self.model).eval().requires_grad_(False)
        tokenizer = load_tokenizer(self.hparams.model_path)  # its own: the worker encodes while training does
        engine = self.hparams.rollout(model=sampler, tokenizer=tokenizer, logprobs=True)
        return OverlappedRollout(engine, partial(copy_weights, dst=sampler), self.hparams.max_staleness)

    def on_train_start(self) -> None:
        if self.trainer.ckpt_path:  # resumed: the engine was built before the checkpoint's weights were loaded
            self.engine.update_weights(self.model)
        if self._overlap_state is not None:  # the batches in flight at the checkpoint, with their samples
            self.engine.load_state_dict(self._overlap_state)
            self._overlap_state = None

    def teardown(self, stage: str) -> None:
        if isinstance(self.engine, OverlappedRollout):
            self.engine.close()

    # ---- rollout: sample, score, pack -------------------------------------------------------------------------
    def _sample(self, batch: dict[str, list], sampling: SamplingConfig):
        """`sampling.n` completions per prompt, flat [prompts x n], with the batch's columns and the prompts' token ids
        repeated to match; the columns gain `completion_tokens`, each completion's token count (for the rewards)."""
        n = sampling.n
        prompts = [self.hparams.template.render(p, tokenizer=self.tokenizer) for p in batch["prompt"]]
        gather = getattr(self.engine, "uses_training_weights", False)  # HF generate: the training model's weights
        with gathered_for_generation(self.model, deepspeed_engine(self), enabled=gather):  # whole under ZeRO-3
            groups = self.engine.generate(prompts, sampling)                              # [prompts][n]
        completions = [c for group in groups for c in group]
        columns = {k: [v for v in values for _ in range(n)] for k, values in batch.items()}
        columns["completion_tokens"] = [len(c.token_ids) for c in completions]
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
        advantages = hp.advantages(rewards, G)                                                        # [N]
        whole = RolloutBatch(input_ids, attention_mask, completion_mask, advantages, hp.loss_weights(completion_mask),
                             sampler_logprobs=sampler_logprobs(completions, completion_mask.size(1), hp.correction,
                                                               off_policy=hp.max_staleness > 0))
        n_micro = -(-N // hp.micro_batch_size)
        left_out = unjudged_groups(rewards, G)                                                        # [P]
        if hp.drop_zero_variance:
            left_out |= zero_variance_groups(rewards, G)
        keep = ~left_out.repeat_interleave(G)                                                         # [N]
        return whole.to(self.device).select(training_order(lengths, keep, n_micro).to(self.device)), n_micro

    def _with_logprobs(self, rollout: RolloutBatch, n_micro: int, stats: dict | None = None) -> RolloutBatch:
        """The rollout with the policy's log-probs at sampling time (mu > 1 or a mismatch correction) and the
        reference's (kl_coef > 0); a correction's multiplier folded into the loss weights, its stats into `stats`."""
        hp = self.hparams
        if hp.mu > 1 or hp.correction is not None:
            rollout = replace(rollout, old_logprobs=self._logprobs_in_chunks(self.model, rollout, n_micro))
        if self.ref_model is not None:
            rollout = replace(rollout, ref_logprobs=self._logprobs_in_chunks(self.ref_model, rollout, n_micro))
        if hp.correction is not None:
            rollout, correction_stats = corrected(rollout, hp.correction)
            (stats if stats is not None else {}).update(correction_stats)
        elif hp.max_staleness:  # off-policy: the ratio's old policy is the sampler's (with a correction it is
            rollout = replace(rollout, old_logprobs=rollout.sampler_logprobs)  # the current one, decoupled PPO)
        return rollout

    def _sample_and_score(self, batch: dict[str, list], extra_round: int = 0) -> "Sampled":
        """One sampling round of the step (0, or an extra round of dynamic sampling), scored."""
        hp = self.hparams
        seed = round_seed(hp.sampling.seed, self.global_step, self.trainer.world_size, self.global_rank, extra_round)
        start = time.perf_counter()
        completions, columns, prompt_ids = self._sample(batch, replace(hp.sampling, seed=seed))
        gen_time = time.perf_counter() - start
        rewards, per_reward, errors = self._score([c.text for c in completions], columns)     # [N]
        return Sampled(completions, columns, prompt_ids, rewards, per_reward, errors, gen_time)

    @torch.no_grad()
    def _rollout(self, batch: dict[str, list]) -> tuple[RolloutBatch, int, dict[str, torch.Tensor]]:
        """Sample, score and pack one rollout: (the rows to train, sorted by length; how many micro-batches; stats).
        Statistics describe every sampled completion, extra rounds of dynamic sampling included."""
        hp = self.hparams
        drawn = self._sample_and_score(batch)
        trained, n_micro, stats = drawn, None, {}
        if hp.dynamic_sampling is not None:
            drawn, trained, n_micro, stats = self._fill_informative(batch, drawn)
        texts = [c.text for c in drawn.completions]
        lengths = torch.tensor([len(c.token_ids) for c in drawn.completions], dtype=torch.float)  # [N]
        finished = torch.tensor([c.finished for c in drawn.completions])                          # [N]
        stats |= rollout_stats(drawn.rewards, lengths, finished, hp.sampling.n, drawn.per_reward,
                               drawn.columns.get("kind"))
        stats |= {"gen_tokens_per_s": lengths.sum() / drawn.gen_time,
                  "reward_errors": torch.tensor(float(drawn.errors))}  # checker errors, timeouts, unjudged golds
        stats |= {name: torch.tensor(share) for name, share in behaviour(texts, hp.language).items()}
        self._maybe_log_completions(texts, drawn.rewards.tolist(), drawn.columns)
        rollout, n_micro, rows = self._pack_trained(trained, n_micro, stats.get("informative_groups"))
        stats["trained_frac"] = torch.tensor(rows / len(texts))
        return self._with_logprobs(rollout, n_micro, stats), n_micro, stats

    def _pack_trained(self, trained: "Sampled", n_micro: int | None,
                      informative: torch.Tensor | None) -> tuple[RolloutBatch, int, int]:
        """`_pack` on the groups to train: (rollout, micro-batches, rows trained). Under dynamic sampling (`n_micro`
        given, the same on every rank) topped up with inert rows to one a micro-batch at least; when no group was
        informative, `trained` is one group only packed for its shapes, and every row is inert."""
        lengths = torch.tensor([len(c.token_ids) for c in trained.completions], dtype=torch.float)   # [N]
        rollout, own = self._pack(trained.prompt_ids, trained.completions, trained.rewards, lengths)
        if n_micro is None:
            return rollout, own, rollout.input_ids.size(0)
        if not informative:
            rollout = rollout.select(torch.zeros(0, dtype=torch.long, device=rollout.input_ids.device))
        return with_inert_rows(rollout, n_micro, self.tokenizer.pad_token_id), n_micro, rollout.input_ids.size(0)

    def _fill_informative(self, batch: dict[str, list], drawn: "Sampled"):
        """DAPO dynamic sampling: extra rounds of the step's number of prompts from `prompt_stream` until the rollout
        holds `informative_groups` groups with reward variance, `max_rounds` at most; the first that many are
        trained. Under DDP every rank runs a round while any rank lacks groups (ZeRO-3 gathers the weights to
        sample: a collective), so the ranks' streams stay in step. Returns (everything drawn, the groups to train,
        micro-batches, stats)."""
        hp, G = self.hparams, self.hparams.sampling.n
        spec, prompts = hp.dynamic_sampling, len(batch["prompt"])
        target, rounds = spec.target(prompts), 0
        while rounds < spec.max_rounds and self.trainer.strategy.reduce_boolean_decision(
                len(first_informative(drawn.rewards, G, target)) < target, all=False):
            rounds += 1
            drawn = drawn + self._sample_and_score(self._extra_prompts(spec).take(prompts), rounds)
        chosen = first_informative(drawn.rewards, G, target).tolist()                         # [<= target]
        stats = {"extra_rounds": torch.tensor(float(rounds)), "informative_groups": torch.tensor(float(len(chosen)))}
        return drawn, drawn.groups(chosen or [0], G), -(-target * G // hp.micro_batch_size), stats

    def _extra_prompts(self, spec: DynamicSampling) -> PromptStream:
        """The stream of extra prompts over the training loader's dataset, built at first use, at the checkpoint's
        position after a resume."""
        if self.prompt_stream is None:
            loader = self.trainer.train_dataloader
            self.prompt_stream = PromptStream(loader.dataset, loader.collate_fn, spec.seed, self.global_rank,
                                              self.trainer.world_size)
            if self._stream_state is not None:
                self.prompt_stream.load_state_dict(self._stream_state)
        return self.prompt_stream

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.prompt_stream is not None or self._stream_state is not None:
            stream = self.prompt_stream
            checkpoint["prompt_stream"] = stream.state_dict() if stream is not None else self._stream_state
        if isinstance(self.engine, OverlappedRollout):  # batches submitted, not trained: with the data position
            checkpoint["overlap"] = self.engine.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._stream_state, self.prompt_stream = checkpoint.get("prompt_stream"), None
        self._overlap_state = checkpoint.get("overlap")

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
        if hp.max_staleness and (batch := self._off_policy_batch(batch)) is None:
            return  # the first max_staleness calls only submit their batch: no optimiser step
        rollout, n_micro, stats = self._rollout(batch)
        stats.update(self._optimise(rollout, n_micro))
        if self.lr_schedulers() is not None:
            self.lr_schedulers().step()
        if hp.ref_refresh_steps and self.ref_model is not None and (self.global_step + 1) % hp.ref_refresh_steps == 0:
            copy_weights(self.model, self.ref_model)
        self.log("train/reward_mean", stats.pop("reward_mean"), prog_bar=True, on_step=True, on_epoch=False)
        self.log_dict({f"train/{k}": v for k, v in stats.items()}, on_step=True, on_epoch=False,
                      batch_size=len(batch["prompt"]))

    def _off_policy_batch(self, batch: dict[str, list]) -> dict[str, list] | None:
        """Submit this call's batch to the sampler's worker; return the oldest one in flight, sampled and ready, once
        more than max_staleness are (its staleness logged), else None. Versions count the rollouts trained."""
        hp, engine, version = self.hparams, self.engine, self.global_step // self.hparams.mu
        prompts = [hp.template.render(p, tokenizer=self.tokenizer) for p in batch["prompt"]]
        seed = rollout_seed(hp.sampling.seed, engine.submitted, self.trainer.world_size, self.global_rank)
        engine.submit(batch, prompts, hp.sampling, version=version, seed=seed)
        job = engine.take()
        if job is not None:
            self.log("train/staleness", float(staleness(version, job.version, hp.max_staleness)), on_step=True,
                     on_epoch=False, batch_size=len(job.batch["prompt"]))
        return None if job is None else job.batch

    def _micro_batch_loss(self, mb: RolloutBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """This micro-batch's share of the rollout's loss (its rows carry their loss weights), and its statistics."""
        hp, width = self.hparams, mb.completion_mask.size(1)
        logprobs, entropy = completion_logprobs(self.model, mb.input_ids, mb.attention_mask, width, entropy=True)
        old = mb.old_logprobs if mb.old_logprobs is not None else logprobs.detach()
        loss, stats = hp.loss(logprobs, old, mb.advantages, mb.completion_mask, mb.ref_logprobs, weights=mb.weights,
                              kl_coef=hp.kl_coef)
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
