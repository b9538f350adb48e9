"""Shared pieces of the DataModules: chat SFT tokenisation, right-padded batches, and length bucketing.

Used by data_modules/chat.py, text.py and preferences.py (and the reward-model reward, which encodes as its training
data did); nothing here is a LightningDataModule.

- `encode_chat` is the one definition of a chat SFT example: the prompt through the chat template (masked from the
  loss token by token), then the response and the end-of-turn token.
- `encode_chat_rows` tokenises a whole file and drops rows that are too long or badly formatted, counting each reason;
  it never truncates (a cut-off response would teach the model to stop mid-sentence or never close its tags).
- `BucketBatchSampler` groups rows of similar length: padding costs real compute on CPU, and packing with a
  block-diagonal mask is slower still there (dense attention over the packed row).
"""

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler

from r1lab.hf import load_tokenizer

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


def bucket_batches(indices: Sequence[int], lengths: Sequence[int], batch_size: int, chunk_batches: int = 50,
                   drop_last: bool = False, generator: torch.Generator | None = None) -> list[list[int]]:
    """Batches of `indices` (in sampler order) with similar lengths: sort within chunks of `chunk_batches` batches,
    cut into batches, then shuffle the batch order with `generator` (keep it when None).

    >>> bucket_batches([0, 1, 2, 3, 4, 5], [9, 1, 8, 2, 7, 3], batch_size=2, chunk_batches=3)
    [[1, 3], [5, 4], [2, 0]]
    >>> bucket_batches([0, 1, 2, 3, 4], [9, 1, 8, 2, 7], batch_size=2, chunk_batches=1, drop_last=True)
    [[1, 0], [3, 2]]
    """
    chunk = batch_size * chunk_batches
    batches = []
    for start in range(0, len(indices), chunk):
        part = sorted(indices[start:start + chunk], key=lambda i: lengths[i])
        batches += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    if generator is not None:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


def padding_fraction(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> float:
    """Share of padded positions when each batch is padded to its longest row.

    >>> round(padding_fraction([[0, 1], [2]], [4, 2, 3]), 3)  # 11 positions, 9 tokens
    0.182
    """
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1.0 - sum(lengths[i] for b in batches for i in b) / padded if padded else 0.0


class BucketBatchSampler(BatchSampler):
    """A `BatchSampler` that buckets by length; Lightning can swap in a DistributedSampler as `sampler` under DDP.

    `lengths[i]` is the token count of dataset row i. `sampler` sets the epoch's order and membership
    (RandomSampler for training, SequentialSampler for validation);
    `shuffle` shuffles the order of batches with a generator seeded by `seed` (advancing every epoch).
    """

    def __init__(self, sampler: Sampler[int], batch_size: int, drop_last: bool = False, lengths: Sequence[int] = (),
                 chunk_batches: int = 50, shuffle: bool = True, seed: int = 0):
        super().__init__(sampler, batch_size, drop_last)
        self.lengths, self.chunk_batches, self.shuffle, self.seed = list(lengths), chunk_batches, shuffle, seed
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        indices = list(self.sampler)
        yield from bucket_batches(indices, self.lengths, self.batch_size, self.chunk_batches, self.drop_last,
                                  self.generator if self.shuffle else None)


class SplitLoaders:
    """setup() and the train/val dataloaders of a DataModule that keeps its inputs in `self.files` (no val files: no
    validation), loads one split with `self._load(split, files)` (which fills `self.stats[split]`) and builds a loader
    with `self._loader(split, shuffle)`."""

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.tokenizer_path)
        for split, files in self.files.items():
            if files is not None and split not in self.stats:  # a later stage's setup() keeps what is loaded
                self._load(split, files)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", shuffle=False) if self.files["val"] is not None else []
