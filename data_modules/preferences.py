"""Reward-model data (R1 stage 4): preference pairs (prompt, chosen, rejected), or responses labelled good or bad.

    data = PreferenceDataModule("world/preferences/helpfulness_train.jsonl", "world/preferences/helpfulness_val.jsonl",
                                "runs/pretrain/model")
    data.setup("fit"); batch = next(iter(data.train_dataloader()))  # input_ids, attention_mask [2B, T], labels [2B]

A response is encoded as chat SFT data is (the prompt through the chat template, the response, the end-of-turn token)
and right-padded. A batch of B pairs holds the B chosen rows, then the B rejected rows in the same order, labelled 1
and 0: the layout `r1lab.stages.reward_model.bradley_terry_loss` pairs up. `PointwisePreferenceDataModule` reads
(prompt, response, label) rows, label 1 for good (or safe), 0 for bad (soft labels in between allowed).
Rows come through r1lab.data.io.read_rows (jsonl, parquet, `datasets`; `columns_map` renames), so a bad row fails with
file, line and field; a row (a pair, if either side is) longer than `max_length` tokens is dropped and counted, never
truncated. Pair batches are length-bucketed (a random pair of lengths 40 and 180 wastes most of a batch on padding);
batches of labelled responses are not: where length tells the labels apart, they would often hold one label
(docs/LOG.md). Everything is tokenised up front in `setup()`.
"""

from collections.abc import Sequence
from functools import partial

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from data_modules.common import SplitLoaders, bucketed_loader, plain_loader
from r1lab.data.encode import encode_chat, pad_right
from r1lab.data.io import DataError, read_rows

Files = str | Sequence[str]


class _UnitInterval(type):
    def __instancecheck__(cls, value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1


LABEL = _UnitInterval("a number in [0, 1]", (), {})  # a column type read_rows checks like any other


def preference_batch(examples: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Examples {input_ids: [ids, ...], labels: [y, ...]} (one row each, or two for a pair) -> {input_ids [N, T],
    attention_mask [N, T], labels [N]}, rows taken position by position: every first row, then every second one.

    >>> b = preference_batch([{"input_ids": [[5, 6], [7]], "labels": [1.0, 0.0]},
    ...                       {"input_ids": [[8], [9, 9, 9]], "labels": [1.0, 0.0]}], pad_id=0)
    >>> b["input_ids"].tolist(), b["labels"].tolist()
    ([[5, 6, 0], [8, 0, 0], [7, 0, 0], [9, 9, 9]], [1.0, 1.0, 0.0, 0.0])
    """
    width = len(examples[0]["input_ids"])
    seqs = [e["input_ids"][k] for k in range(width) for e in examples]
    input_ids, attention_mask = pad_right(seqs, pad_id)
    labels = torch.tensor([e["labels"][k] for k in range(width) for e in examples], dtype=torch.float)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class PreferenceDataModule(SplitLoaders, LightningDataModule):
    """Preference pairs -> batches of the B chosen then the B rejected responses, labelled 1 and 0.

    `stats` after `setup()`: {"train": {rows, bad_rows, too_long, kept, tokens, max_tokens}, "val": {...}}.
    """

    columns = {"prompt": str, "chosen": str, "rejected": str}
    nonempty = ("prompt", "chosen", "rejected")
    bucketed = True   # every pair holds both labels, so batches of similar lengths stay balanced

    def __init__(self, train_files: Files, val_files: Files | None, tokenizer_path: str, max_length: int = 512,
                 batch_size: int = 16, num_workers: int = 0, columns_map: dict[str, str] | None = None, seed: int = 0,
                 on_error: str = "raise"):
        super().__init__()
        self.on_error = on_error
        self.files = {"train": train_files, "val": val_files}
        self.tokenizer_path, self.max_length, self.batch_size = tokenizer_path, max_length, batch_size
        self.num_workers, self.columns_map, self.seed = num_workers, columns_map, seed
        self.tokenizer = None
        self.examples: dict[str, list[dict]] = {}
        self.stats: dict[str, dict[str, int]] = {}

    def encode(self, row: dict) -> dict:
        """One example: the rows a loss sees together and their labels."""
        ids = [encode_chat(self.tokenizer, row["prompt"], row[side])[0] for side in ("chosen", "rejected")]
        return {"input_ids": ids, "labels": [1.0, 0.0]}

    def _load(self, split: str, files) -> None:
        skipped: list[str] = []
        rows = read_rows(files, self.columns, self.columns_map, nonempty=self.nonempty, on_error=self.on_error,
                         skipped=skipped)
        encoded = [self.encode(row) for row in rows]
        kept = [e for e in encoded if max(map(len, e["input_ids"])) <= self.max_length]
        lengths = [len(ids) for e in kept for ids in e["input_ids"]]
        stats = {"rows": len(rows), "bad_rows": len(skipped), "too_long": len(rows) - len(kept), "kept": len(kept),
                 "tokens": sum(lengths), "max_tokens": max(lengths, default=0)}
        if not kept:
            raise DataError(f"{files}: no usable rows left ({stats}); raise max_length")
        self.examples[split], self.stats[split] = kept, stats
        rank_zero_info(f"{type(self).__name__} {split} ({files}): {stats}")

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.examples:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for the {split} dataloader")
        data = self.examples[split]
        collate = partial(preference_batch, pad_id=self.tokenizer.pad_token_id)
        if self.bucketed:   # a batch pads every response to its longest: bucket by each example's longest
            return bucketed_loader(data, [max(map(len, e["input_ids"])) for e in data], self.batch_size, shuffle,
                                   self.seed, self.num_workers, collate)
        return plain_loader(data, self.batch_size, shuffle, self.seed, self.num_workers, collate)



class PointwisePreferenceDataModule(PreferenceDataModule):
    """Responses labelled 1 (good, safe) or 0 (bad, unsafe) -> batches {input_ids, attention_mask, labels [B]}."""

    columns = {"prompt": str, "response": str, "label": LABEL}
    nonempty = ("prompt", "response")
    bucketed = False  # length tells the labels apart here: bucketed batches would often hold one label

    def encode(self, row: dict) -> dict:
        return {"input_ids": [encode_chat(self.tokenizer, row["prompt"], row["response"])[0]],
                "labels": [float(row["label"])]}
