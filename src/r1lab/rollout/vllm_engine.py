"""VLLMRollout: the rollout interface on a vLLM engine that lives in the training process (colocated).

Same contract as `r1lab.rollout.engine.HFRollout`: `generate(prompts, sampling)` -> [prompts][n] `Completion`s, token ids up
to and including the eos id or the token completing a stop string (cut by the same `finish_completion`), text decoded
by our tokenizer without special tokens, same seed -> same completions. vLLM is given the stop strings too, so it stops
generating there; it loads the tokenizer from our tokenizer's directory to match them.
The engine is built once from the model's directory and then receives the model's current weights in memory
(`update_weights`, called by GRPO after each optimiser step), never restarted.
Usage: `VLLMRollout(model, tokenizer).generate([render_r1_zero("What is 2 + 3?")], SamplingConfig(n=4))`,
or `rollout=vllm` for eval, sample and GRPO (configs/rollout/vllm.yaml).

Simplified: one engine, no tensor parallelism; in-process mode only (`VLLM_ENABLE_V1_MULTIPROCESSING=0`: tensors are
passed directly, no files); prompts go in as token ids (our tokenizer, no added special tokens, as GRPO re-tokenizes
them); each prompt gets its own seed drawn from `sampling.seed` (vLLM gives its n samples seed + 0..n-1), so
samples do not depend on how the engine schedules them. Chunked prefill is off: with per-request seeds,
vLLM 0.32's CPU runner crashes when it cuts a prefill (`CPU Generator does not use offset`).
Log-probs, when asked for, are the model's raw log p of each sampled token (vLLM's default `logprobs_mode`
`raw_logprobs`: before temperature and top-p), as the trainer computes them and HFRollout returns them; a mismatch
correction compares the two at temperature 1 whatever the sampling temperature.
"""

import os
import random
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from r1lab.infra.deepspeed import gathered
from r1lab.infra.peft import is_peft, merged_weights
from r1lab.rollout.engine import Completion, SamplingConfig, eos_ids, finish_completion, raw_decoder

CACHE = Path(tempfile.gettempdir()) / "r1lab-vllm"
ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0",   # the engine and its worker in this process: weights pass as tensors
       "VLLM_NO_USAGE_STATS": "1", "VLLM_DO_NOT_TRACK": "1",
       "VLLM_CACHE_ROOT": str(CACHE / "vllm"), "TORCHINDUCTOR_CACHE_DIR": str(CACHE / "inductor")}


def import_vllm():
    """vLLM, imported after setting the environment it needs (variables the user set win)."""
    for key, value in ENV.items():
        os.environ.setdefault(key, value)
    if os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] != "0":
        raise RuntimeError("VLLMRollout needs vLLM's in-process engine (it passes weights as tensors): "
                           "unset VLLM_ENABLE_V1_MULTIPROCESSING or set it to 0")
    try:
        import vllm
    except ImportError as e:
        raise ImportError("rollout=vllm needs vLLM: install the `cpu` extra (make setup) or the `gpu` extra") from e
    return vllm


def named_weights(model: PreTrainedModel) -> list[tuple[str, torch.Tensor]]:
    """Every named parameter under its checkpoint name, plus `lm_head.weight` when tied to the embeddings
    (`named_parameters` lists a tied tensor once; vLLM's CPU backend only repacks the head when it is sent).
    A LoRA model (`module/peft=lora`) sends base + adapter merged, under the base model's names, itself unchanged."""
    if is_peft(model):
        return merged_weights(model)
    weights = [(name, p.detach()) for name, p in model.named_parameters()]
    head = model.get_output_embeddings()
    if head is not None and "lm_head.weight" not in dict(weights):
        weights.append(("lm_head.weight", head.weight.detach()))
    return weights


class FinishedPrompts(tqdm):
    """The bar vLLM's `generate(use_tqdm=...)` advances as requests finish, telling `done` how many prompts have
    finished so far (vLLM advances it by a request's samples); it draws nothing."""

    def __init__(self, *args, done: Callable[[int], None], **kwargs):
        self.done, self.prompts, self.sink = done, 0, open(os.devnull, "w")
        super().__init__(*args, file=self.sink, **kwargs)

    def update(self, n: int = 1) -> bool | None:
        self.prompts += 1
        self.done(self.prompts)
        return super().update(n)

    def close(self) -> None:
        super().close()
        self.sink.close()


class VLLMRollout:
    """A vLLM engine for `model`, started from `model_path` (default: the directory the model was loaded from).

    max_model_len: prompt + completion tokens (None: the config's max_position_embeddings). kv_cache_bytes: memory
    for the KV cache (vLLM's CPU default reads NUMA memory and fails here). logprobs: fill `Completion.logprobs`.
    dtype: the engine's weights (None: the model's; real runs keep float32 master weights and sample in bfloat16).
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, model_path: str | None = None,
                 max_model_len: int | None = None, kv_cache_bytes: int = 256 << 20, max_num_seqs: int = 256,
                 logprobs: bool = False, enforce_eager: bool = True, dtype: str | None = None):
        vllm = import_vllm()
        model_path = model_path or model.name_or_path
        if not model_path or not (Path(model_path) / "config.json").is_file():
            raise ValueError(f"VLLMRollout starts vLLM from a model directory; {model_path!r} is none: pass model_path")
        tokenizer_dir = tokenizer.name_or_path  # vLLM matches stop strings with the tokenizer we decode with
        if not tokenizer_dir or not (Path(tokenizer_dir) / "tokenizer_config.json").is_file():
            raise ValueError(f"VLLMRollout needs a tokenizer loaded from a directory (r1lab.infra.hf.load_tokenizer), "
                             f"got one from {tokenizer_dir!r}")
        self.model, self.tokenizer, self.logprobs = model, tokenizer, logprobs
        max_model_len = max_model_len or model.config.max_position_embeddings
        threads, set_num_threads = torch.get_num_threads(), torch.set_num_threads
        try:  # the engine reseeds the global RNGs and stubs out torch.set_num_threads: keep the trainer's
            with torch.random.fork_rng():
                self.llm = vllm.LLM(model=str(model_path), dtype=dtype or str(model.dtype).removeprefix("torch."),
                                    max_model_len=max_model_len, kv_cache_memory_bytes=kv_cache_bytes,
                                    max_num_seqs=max_num_seqs, enforce_eager=enforce_eager,
                                    tokenizer=str(tokenizer_dir),
                                    generation_config="vllm", enable_chunked_prefill=False,
                                    max_num_batched_tokens=max(8192, max_model_len), seed=0,
                                    logprobs_mode="raw_logprobs")  # temperature 1, as the trainer's log-probs
        finally:
            torch.set_num_threads = set_num_threads
            torch.set_num_threads(threads)
        self.update_weights(model)  # the model may differ from its directory already (e.g. modified in memory)

    @torch.no_grad()
    def update_weights(self, model: PreTrainedModel) -> None:
        """Copy the model's current weights into the engine and drop the KV cache computed with the old ones.
        Under ZeRO-3 every rank calls this (GRPO does): the shards are gathered into whole tensors first."""
        with gathered(model):
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": named_weights(model)})
        self.llm.reset_prefix_cache()

    def generate(self, prompts: list[str], sampling: SamplingConfig,
                 done: Callable[[int], None] | None = None) -> list[list[Completion]]:
        from vllm import SamplingParams

        if sampling.n < 1 or sampling.max_new_tokens < 1:
            raise ValueError(f"SamplingConfig needs n >= 1 and max_new_tokens >= 1, got {sampling}")
        sample, eos = sampling.temperature > 0, eos_ids(self.model, self.tokenizer)
        seeds = random.Random(sampling.seed).sample(range(2**31), len(prompts))  # vLLM seeds sample i with seed + i
        params = [SamplingParams(n=sampling.n, temperature=sampling.temperature if sample else 0.0,
                                 top_p=sampling.top_p if sample else 1.0, max_tokens=sampling.max_new_tokens,
                                 stop_token_ids=eos, seed=seed, stop=sampling.stop or None,
                                 include_stop_str_in_output=True, detokenize=bool(sampling.stop),
                                 skip_special_tokens=False, logprobs=0 if self.logprobs else None) for seed in seeds]
        encoded = self.tokenizer(prompts, add_special_tokens=False).input_ids  # renderers add bos/chat tokens
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in encoded], params,
                                    use_tqdm=partial(FinishedPrompts, done=done) if done else False)
        return [[self._completion(c, eos, sampling.stop) for c in sorted(out.outputs, key=lambda c: c.index)]
                for out in outputs]

    def _completion(self, output, eos: list[int], stop: list[str]) -> Completion:
        token_ids, finished = finish_completion(list(output.token_ids), eos, raw_decoder(self.tokenizer), stop)
        if isinstance(output.stop_reason, str) and not finished:  # vLLM's detokenizer saw a stop string, ours did not
            raise RuntimeError(f"vLLM stopped at {output.stop_reason!r} in {output.text!r}, but our tokenizer's "
                               f"decode of the same ids holds no stop string of {stop}: choose stop strings that "
                               "both decoders write alike (e.g. no leading space a tokenizer may drop)")
        logprobs = None
        if self.logprobs:
            logprobs = [step[token].logprob for step, token in zip(output.logprobs, token_ids)]
        return Completion(text=self.tokenizer.decode(token_ids, skip_special_tokens=True), token_ids=token_ids,
                          finished=finished, logprobs=logprobs)
