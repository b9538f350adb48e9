"""Sampling completions from a causal LM: the rollout interface of evaluation and GRPO, and its HF implementation.

`RolloutEngine.generate(prompts, sampling)` returns `n` completions per prompt text. `HFRollout` wraps
`model.generate` (left padding, KV cache); `r1lab.rollout.vllm_engine.VLLMRollout` implements it on vLLM.
Usage: `HFRollout(model, tokenizer).generate([render_r1_zero("What is 2 + 3?")], SamplingConfig(n=4))`.
Simplified: prompts are rendered strings, tokenized without added special tokens (a renderer writes bos or chat
markers itself, so GRPO re-tokenizes them identically).
A completion ends at the first eos id or right after the token that completes a stop string (`SamplingConfig.stop`,
set per template: R1-Zero's is `</answer>`); both engines cut with `finish_completion`, so the same ids give the same
completion whichever engine sampled them, and its text is always the decode of its token ids.
"""

from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
from transformers import (
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)


@dataclass
class Completion:
    text: str              # decoded without special tokens
    token_ids: list[int]   # generated ids, up to and including the eos id or the token completing a stop string
    finished: bool         # False: stopped by max_new_tokens before any eos id or stop string
    logprobs: list[float] | None = None  # the sampler's raw log p of each token (temperature 1), if asked for


@dataclass
class SamplingConfig:
    n: int = 1                 # completions per prompt
    temperature: float = 1.0   # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0
    stop: list[str] = field(default_factory=list)  # strings that end a completion (kept in it), e.g. ["</answer>"]

    def __post_init__(self):
        if isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"SamplingConfig.stop must be a list of non-empty strings, got {self.stop!r}")
        self.stop = list(self.stop)  # a Hydra ListConfig becomes a list (asdict and json see plain values)


class RolloutEngine(Protocol):
    def generate(self, prompts: list[str], sampling: SamplingConfig,
                 done: Callable[[int], None] | None = None) -> list[list[Completion]]:
        """Completions as [len(prompts)][sampling.n]; `done(k)` is told, as they finish, how many prompts have all
        their completions (for a progress line)."""
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


def cut_at_stop(token_ids: list[int], decode: Callable[[list[int]], str],
                stop: list[str]) -> tuple[list[int], bool]:
    """Cut ids right after the first token whose prefix text, `decode(ids[:k])`, holds a stop string; (ids, stopped).
    The stop string stays in the completion (R1-Zero's format reward needs its `</answer>`); a last token that runs
    past the stop string stays whole, so the text is always `decode(ids)`. Binary search: a prefix's text is a
    prefix of the whole text, so holding a stop string is monotone in k.

    >>> vocab = {1: " 5 </", 2: "answer", 3: ">\\n", 4: "more"}
    >>> decode = lambda ids: "".join(vocab[i] for i in ids)
    >>> cut_at_stop([1, 2, 3, 4, 3], decode, ["</answer>"]), cut_at_stop([1, 2, 4], decode, ["</answer>"])
    (([1, 2, 3], True), ([1, 2, 4], False))
    >>> cut_at_stop([4, 1, 2], decode, ["</answer>", "5 <"]), cut_at_stop([1, 2, 3], decode, [])
    (([4, 1], True), ([1, 2, 3], False))
    """
    holds = lambda k: any(s in decode(token_ids[:k]) for s in stop)
    if not stop or not holds(len(token_ids)):
        return token_ids, False
    lo, hi = 1, len(token_ids)  # holds(hi) is true; find the smallest such k
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if holds(mid) else (mid + 1, hi)
    return token_ids[:hi], True


def finish_completion(new_ids: list[int], eos: list[int], decode: Callable[[list[int]], str],
                      stop: list[str]) -> tuple[list[int], bool]:
    """The completion in generated ids: up to the first eos id or stop string, whichever ends first; (ids, finished).

    >>> decode = lambda ids: "".join(map(str, ids))
    >>> finish_completion([4, 5, 2, 5, 0], [2], decode, ["45"]), finish_completion([4, 2, 5], [2], decode, ["45"])
    (([4, 5], True), ([4, 2], True))
    """
    ids, finished = split_completion(new_ids, eos)
    ids, stopped = cut_at_stop(ids, decode, stop)
    return ids, finished or stopped


def raw_decoder(tokenizer: PreTrainedTokenizerBase) -> Callable[[list[int]], str]:
    """The text stop strings are matched in: every token decoded, special ones included (so `<|im_end|>` could be
    one, though eos ids are the way to stop at a special token)."""
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=False)


class StopOnStrings(StoppingCriteria):
    """Ends a row of `generate` once its completion text (ids after the first `prompt_width` columns, decoded by
    `decode`) holds a stop string: the same test as `cut_at_stop`, so generation ends where the cut falls. Only the
    last `window` tokens are decoded at each step (a stop string of c characters spans at most 4c tokens), and the
    whole completion only when they hold one."""

    def __init__(self, decode: Callable[[list[int]], str], stop: list[str], prompt_width: int):
        self.decode, self.stop, self.prompt_width = decode, stop, prompt_width
        self.window = 4 * max(len(s) for s in stop) + 1

    def holds(self, ids: list[int]) -> bool:
        return any(s in self.decode(ids) for s in self.stop)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        rows = input_ids[:, self.prompt_width:].tolist()
        done = [self.holds(row[-self.window:]) and self.holds(row) for row in rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class HFRollout:
    """`model.generate` over batches of `batch_size` prompts x n samples; the model's train/eval mode is restored after.

    autocast: True runs generation under bf16 autocast; False keeps the caller's autocast state (e.g. Lightning's
    bf16-mixed inside a training step). Off by default: on the CPUs measured, bf16 generation was slower than fp32
    (docs/LOG.md). logprobs: fill `Completion.logprobs` from generate's `output_logits`, the raw logits before
    temperature and top-p (as vLLM's default `raw_logprobs`, and as the trainer computes them); generate then holds
    [steps, batch_size x n, V] logits until it returns.
    """

    uses_training_weights = True  # generates with the training model itself: under ZeRO-3 GRPO gathers it first

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int = 64,
                 autocast: bool = False, logprobs: bool = False):
        if tokenizer.pad_token_id is None:
            raise ValueError("HFRollout needs a tokenizer with a pad token (r1lab.infra.hf.load_tokenizer sets one)")
        self.model, self.tokenizer, self.batch_size, self.autocast = model, tokenizer, batch_size, autocast
        self.logprobs = logprobs

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

    def generate(self, prompts: list[str], sampling: SamplingConfig,
                 done: Callable[[int], None] | None = None) -> list[list[Completion]]:
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
                    out.extend(self._generate_batch(batch, sampling, config, eos))
                    if done:
                        done(len(out))
        finally:
            self.model.train(was_training)
        return out

    def _generate_batch(self, prompts: list[str], sampling: SamplingConfig, config: GenerationConfig,
                        eos: list[int]) -> list[list[Completion]]:
        n, decode = sampling.n, raw_decoder(self.tokenizer)
        encoded = self.tokenizer(prompts, add_special_tokens=False).input_ids  # renderers add bos/chat tokens
        ids, mask = left_pad(encoded, self.tokenizer.pad_token_id)                        # [P, T]
        ids, mask = ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)             # [P*n, T]
        stopping = StoppingCriteriaList([StopOnStrings(decode, sampling.stop, ids.size(1))] if sampling.stop else [])
        out = self.model.generate(input_ids=ids.to(self.model.device), attention_mask=mask.to(self.model.device),
                                  generation_config=config, stopping_criteria=stopping,
                                  return_dict_in_generate=self.logprobs, output_logits=self.logprobs)
        generated = out.sequences if self.logprobs else out                             # [P*n, T + new]
        new = generated[:, ids.size(1):]                                                  # [P*n, new]
        step_logprobs = (torch.stack(out.logits, 1).float().log_softmax(-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
                         .tolist() if self.logprobs else None)                           # [P*n, new]
        completions = []
        for i, row in enumerate(new.tolist()):
            token_ids, finished = finish_completion(row, eos, decode, sampling.stop)
            text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
            logprobs = step_logprobs[i][:len(token_ids)] if self.logprobs else None
            completions.append(Completion(text=text, token_ids=token_ids, finished=finished, logprobs=logprobs))
        return [completions[i * n : (i + 1) * n] for i in range(len(prompts))]
