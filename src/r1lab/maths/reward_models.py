"""Scoring completions with a trained reward model (R1 stage 4): the reward the all-scenario RL and the judges use.

The model is the directory `experiment=reward_model_*` exported: a causal-LM backbone with a scalar head
(`AutoModelForSequenceClassification`, num_labels=1), the score read at the last non-pad token.
Simplified: one score per response; the reward is sigmoid(score), so a Bradley-Terry model's reward is bounded but
only its order means anything.
"""

from collections.abc import Callable
from functools import lru_cache

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from r1lab.data.encode import encode_chat, pad_right
from r1lab.infra.deepspeed import zero3_loading
from r1lab.infra.hf import check_model_dir, load_tokenizer
from r1lab.maths.rewards import completion_text


def load_reward_model(path: str, dtype: str = "float32", pad_token_id: int | None = None) -> PreTrainedModel:
    """A scalar-head model: a saved reward model, or a causal LM given a new head. The score is read at the last token
    that is not `pad_token_id`, so it must be set (and differ from eos, or the score is read before the eos)."""
    extra = {} if pad_token_id is None else {"pad_token_id": pad_token_id}
    with zero3_loading():  # configure_model under ZeRO-3: load into the partitioned parameters
        return AutoModelForSequenceClassification.from_pretrained(
            str(check_model_dir(path)), num_labels=1, dtype=getattr(torch, dtype), attn_implementation="sdpa", **extra)


@lru_cache(maxsize=4)
def cached_reward_model(path: str, dtype: str, device: str) -> tuple[PreTrainedModel, object]:
    """(model, tokenizer) at `path`, loaded once per process and kept, frozen and in eval mode, on `device`."""
    tokenizer = load_tokenizer(path)
    model = load_reward_model(path, dtype, tokenizer.pad_token_id).to(device).eval().requires_grad_(False)
    return model, tokenizer


@torch.no_grad()
def score_responses(model: PreTrainedModel, tokenizer, prompts: list[str], responses: list[str],
                    batch_size: int = 32) -> list[float]:
    """The reward model's score of each (prompt, response), encoded exactly as its training data was."""
    ids = [encode_chat(tokenizer, p, r)[0] for p, r in zip(prompts, responses, strict=True)]
    scores: list[float] = []
    for start in range(0, len(ids), batch_size):
        input_ids, attention_mask = pad_right(ids[start:start + batch_size], tokenizer.pad_token_id)
        logits = model(input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device)).logits
        scores += logits.squeeze(-1).float().tolist()
    return scores


def reward_model_reward(completions: list, prompt: list[str], model_path: str,
                        view: Callable[[str], str] | None = None, batch_size: int = 32, dtype: str = "float32",
                        device: str | None = None, **_) -> list[float]:
    """sigmoid(score) of the reward model at `model_path` for each prompt and `view(completion)` (the whole completion
    when `view` is None; `r1lab.maths.formats.summary_of` scores the part after the chain of thought, as R1's helpfulness
    reward did). The model is loaded on first use and cached.

    Used from a rewards config as `fn: {_target_: r1lab.maths.reward_models.reward_model_reward, _partial_: true,
    model_path: ..., view: {_target_: r1lab.maths.formats.summary_of, _partial_: true}}`.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = cached_reward_model(str(model_path), dtype, device)
    texts = [completion_text(c) for c in completions]
    responses = [view(t) for t in texts] if view is not None else texts
    return torch.sigmoid(torch.tensor(score_responses(model, tokenizer, prompt, responses, batch_size))).tolist()
