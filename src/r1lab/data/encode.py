"""Encoding rows for the model: the one definition of a chat SFT example, and right-padded batches.

`encode_chat` puts the prompt through the chat template (masked from the loss token by token), then the response and
the end-of-turn token; the SFT data modules and the reward-model reward both encode this way. `encode_chat_rows`
tokenises a whole file and drops rows that are too long or badly formatted, counting each reason; it never truncates
(a cut-off response would teach the model to stop mid-sentence or never close its tags).
"""

from collections.abc import Callable, Sequence

import torch

IGNORE_INDEX = -100  # label value that the loss skips (prompt and padding positions)


def encode_chat(tokenizer, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one user turn and its answer; labels are -100 exactly on the prompt tokens."""
    prompt_ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    response_ids = tokenizer(response, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    return prompt_ids + response_ids, [IGNORE_INDEX] * len(prompt_ids) + response_ids


def encode_chat_rows(tokenizer, rows: Sequence[dict], max_length: int,
                     response_check: Callable[[str], bool] | None = None) -> tuple[list[dict], dict[str, int]]:
    """Tokenised examples {input_ids, labels} of `rows` (dicts with prompt and response) and counts of what was dropped.

    A row is dropped, never cut, when `response_check(response)` is False (`bad_format`) or when its full length
    exceeds `max_length` (`too_long`).
    """
    stats = {"rows": len(rows), "bad_format": 0, "too_long": 0}
    examples = []
    for row in rows:
        if response_check is not None and not response_check(row["response"]):
            stats["bad_format"] += 1
            continue
        input_ids, labels = encode_chat(tokenizer, row["prompt"], row["response"])
        if len(input_ids) > max_length:
            stats["too_long"] += 1
            continue
        examples.append({"input_ids": input_ids, "labels": labels})
    lengths = [len(e["input_ids"]) for e in examples]
    stats.update(kept=len(examples), tokens=sum(lengths), max_tokens=max(lengths, default=0))
    return examples, stats


def pad_batch(examples: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of {input_ids, labels} to the longest one (labels padded with -100).

    >>> b = pad_batch([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}], pad_id=0)
    >>> b["input_ids"].tolist(), b["labels"].tolist(), b["attention_mask"].tolist()
    ([[5, 6, 7], [8, 0, 0]], [[-100, 6, 7], [8, -100, -100]], [[1, 1, 1], [1, 0, 0]])
    """
    width = max(len(e["input_ids"]) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)  # [B, T]
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)  # [B, T]
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)  # [B, T]
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        input_ids[i, :n] = torch.tensor(e["input_ids"], dtype=torch.long)
        labels[i, :n] = torch.tensor(e["labels"], dtype=torch.long)
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def pad_parts(examples: Sequence[dict], pad_id: int, sizes: Sequence[int]) -> list[dict[str, torch.Tensor]]:
    """`examples` cut into consecutive parts of `sizes` rows, each part right-padded to its own longest row: a mixed
    batch of long reasoning rows and short general ones then pads no general row to a reasoning row's length.

    >>> parts = pad_parts([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8], "labels": [8]}], 0, [1, 1])
    >>> [p["input_ids"].tolist() for p in parts]
    [[[5, 6, 7]], [[8]]]
    """
    if sum(sizes) != len(examples):
        raise ValueError(f"pad_parts: parts of {list(sizes)} rows do not cut a batch of {len(examples)}")
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [pad_batch(examples[s:s + n], pad_id) for s, n in zip(starts, sizes)]


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [B, T] and attention mask [B, T] (positions of real tokens do not depend on the batch).

    >>> ids, mask = pad_right([[5, 6], [7]], pad_id=0)
    >>> ids.tolist(), mask.tolist()
    ([[5, 6], [7, 0]], [[1, 1], [1, 0]])
    """
    width = max(len(s) for s in seqs)
    ids = torch.tensor([list(s) + [pad_id] * (width - len(s)) for s in seqs], dtype=torch.long)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], dtype=torch.long)
    return ids, mask
