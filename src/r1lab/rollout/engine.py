"""Sampling completions from a causal LM: the rollout interface of evaluation and GRPO, and its HF implementation.

`RolloutEngine.generate(prompts, sampling)` returns `n` completions per prompt text. `HFRollout` wraps
`model.generate` (left padding, KV cache); `r1lab.rollout.vllm_engine.VLLMRollout` implements it on vLLM.
Usage: `HFRollout(model, tokenizer).generate([render_r1_zero("What is 2 + 3?")], SamplingConfig(n=4))`.
Simplified: prompts are rendered strings, tokenized without added special tokens (a renderer writes bos or chat
markers itself, so GRPO re-tokenizes them identically); no stop strings, only eos ids.
"""

from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Protocol

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class Completion:
    text: str              # decoded without special tokens
    token_ids: list[int]   # generated ids, up to and including the eos id when finished
    finished: bool         # False: stopped by max_new_tokens before any eos id
    logprobs: list[float] | None = None  # the sampler's log p of each token, where the engine returns them (vLLM)


@dataclass
class SamplingConfig:
    n: int = 1                 # completions per prompt
    temperature: float = 1.0   # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0


class RolloutEngine(Protocol):
    def generate(self, prompts: list[str], sampling: SamplingConfig) -> list[list[Completion]]:
        """Completions as [len(prompts)][sampling.n]."""
        ...


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids [B, T] and attention mask [B, T].

    >>> ids, mask = left_pad([[5, 6], [7]], 0)
    >>> ids.tolist(), mask.tolist()
    ([[5, 6], [0, 7]], [[1, 1], [0, 1]])
    """
    width = max(len(s) for s in seqs)
    ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in seqs], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], dtype=torch.long)
    return ids, mask


def eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids that end a completion: the model's generation_config eos ids, else the tokenizer's eos."""
    eos = model.generation_config.eos_token_id
    eos = tokenizer.eos_token_id if eos is None else eos
    if eos is None:
        raise ValueError("neither the model's generation_config nor the tokenizer defines an eos token")
    return [eos] if isinstance(eos, int) else list(eos)


def split_completion(new_ids: list[int], eos: list[int]) -> tuple[list[int], bool]:
    """Cut generated ids after the first eos id (the rest is padding); (ids, finished).

    >>> split_completion([4, 5, 2, 0, 0], eos=[2]), split_completion([4, 5], eos=[2])
    (([4, 5, 2], True), ([4, 5], False))
    """
    for i, token in enumerate(new_ids):
        if token in eos:
            return new_ids[: i + 1], True
    return new_ids, False


def chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class HFRollout:
    """`model.generate` over batches of `batch_size` prompts x n samples; the model's train/eval mode is restored after.

    autocast: True runs generation under bf16 autocast; False keeps the caller's autocast state (e.g. Lightning's
    bf16-mixed inside a training step). Off by default: on the CPUs measured, bf16 generation was slower than fp32
    (docs/LOG.md).
    """

    uses_training_weights = True  # generates with the training model itself: under ZeRO-3 GRPO gathers it first

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int = 64,
                 autocast: bool = False):
        if tokenizer.pad_token_id is None:
            raise ValueError("HFRollout needs a tokenizer with a pad token (r1lab.infra.hf.load_tokenizer sets one)")
        self.model, self.tokenizer, self.batch_size, self.autocast = model, tokenizer, batch_size, autocast

    def generation_config(self, sampling: SamplingConfig) -> GenerationConfig:
        """Exactly the requested sampling. `generate` fills every None field from the checkpoint's generation_config
        (a chat model may ship top_k=20 or repetition_penalty=1.05), so the neutral values are set explicitly."""
        sample = sampling.temperature > 0
        return GenerationConfig(
            max_new_tokens=sampling.max_new_tokens, do_sample=sample, num_beams=1,
            temperature=sampling.temperature if sample else 1.0, top_p=sampling.top_p if sample else 1.0,
            top_k=0, min_p=0.0, typical_p=1.0, repetition_penalty=1.0, no_repeat_ngram_size=0, min_new_tokens=0,
            eos_token_id=eos_ids(self.model, self.tokenizer), pad_token_id=self.tokenizer.pad_token_id, use_cache=True,
        )

    def update_weights(self, model: PreTrainedModel) -> None:
        """Generation runs on the training module itself, so its weights are always current."""
        if model is not self.model:
            raise ValueError("HFRollout generates with the model it was built with; build a new one for another model")

    def generate(self, prompts: list[str], sampling: SamplingConfig) -> list[list[Completion]]:
        if sampling.n < 1 or sampling.max_new_tokens < 1:
            raise ValueError(f"SamplingConfig needs n >= 1 and max_new_tokens >= 1, got {sampling}")
        config, eos, device = self.generation_config(sampling), eos_ids(self.model, self.tokenizer), self.model.device
        was_training = self.model.training
        self.model.eval()
        out: list[list[Completion]] = []
        fork = [device] if device.type == "cuda" else []
        try:
            autocast = torch.autocast(device.type, dtype=torch.bfloat16) if self.autocast else nullcontext()
            with torch.random.fork_rng(devices=fork), torch.inference_mode(), autocast:
                torch.manual_seed(sampling.seed)  # same seed, same prompts and batch size -> same completions
                for batch in chunks(prompts, self.batch_size):
                    out.extend(self._generate_batch(batch, sampling.n, config, eos))
        finally:
            self.model.train(was_training)
        return out

    def _generate_batch(self, prompts: list[str], n: int, config: GenerationConfig,
                        eos: list[int]) -> list[list[Completion]]:
        encoded = self.tokenizer(prompts, add_special_tokens=False).input_ids  # renderers add bos/chat tokens
        ids, mask = left_pad(encoded, self.tokenizer.pad_token_id)                        # [P, T]
        ids, mask = ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)             # [P*n, T]
        generated = self.model.generate(input_ids=ids.to(self.model.device), attention_mask=mask.to(self.model.device),
                                        generation_config=config)                          # [P*n, T + new]
        rows = generated[:, ids.size(1):].tolist()
        completions = []
        for row in rows:
            token_ids, finished = split_completion(row, eos)
            text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
            completions.append(Completion(text=text, token_ids=token_ids, finished=finished))
        return [completions[i * n : (i + 1) * n] for i in range(len(prompts))]
