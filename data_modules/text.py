"""Pretraining data: raw documents packed into fixed-length blocks, loss on every token (how the demo's base model
is made, with the SFT module reused unchanged since labels == input_ids everywhere).

    data = TextDataModule("world/pretrain/train.jsonl", "world/pretrain/val.jsonl", "runs/tokenizer", block_size=256)

Each document is tokenised, followed by `<|endoftext|>` (the tokenizer's bos token, our document separator), all
documents are concatenated in file order and cut into blocks of `block_size`; the tail shorter than a block is dropped.
Simplification: attention crosses document boundaries inside a block (the separator token marks them), as in
GPT-2-style pretraining; no masking per document.
"""

from collections.abc import Sequence

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from data_modules.common import SplitLoaders, plain_loader
from r1lab.data.io import DataError, read_rows

Files = str | Sequence[str]


def pack_blocks(docs: Sequence[Sequence[int]], block_size: int, sep_id: int) -> torch.Tensor:
    """Concatenate documents, each followed by `sep_id`, and cut into rows of `block_size` (the tail is dropped).

    >>> pack_blocks([[1, 2, 3], [4, 5]], block_size=3, sep_id=0).tolist()  # stream 1 2 3 0 4 5 0
    [[1, 2, 3], [0, 4, 5]]
    """
    stream = torch.tensor([t for doc in docs for t in (*doc, sep_id)], dtype=torch.long)  # [N]
    n_blocks = len(stream) // block_size
    return stream[: n_blocks * block_size].view(n_blocks, block_size)  # [n_blocks, block_size]


def block_batch(blocks: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stack blocks [T] into a batch; every position is a real token and a target.

    >>> block_batch([torch.tensor([1, 2]), torch.tensor([3, 4])])["labels"].tolist()
    [[1, 2], [3, 4]]
    """
    input_ids = torch.stack(list(blocks))  # [B, T]
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids.clone()}


class TextDataModule(SplitLoaders, LightningDataModule):
    """Raw-text rows ({"text": ...}) -> batches of packed blocks {input_ids, attention_mask, labels} [B, block_size].

    `stats` after `setup()`: {"train": {docs, tokens, blocks, dropped_tokens}, "val": {...}}.
    """

    def __init__(self, train_files: Files, val_files: Files | None, tokenizer_path: str, block_size: int = 256,
                 batch_size: int = 16, column: str = "text", num_workers: int = 0, seed: int = 0,
                 on_error: str = "raise"):
        super().__init__()
        self.on_error = on_error
        self.files = {"train": train_files, "val": val_files}
        self.tokenizer_path, self.block_size, self.batch_size = tokenizer_path, block_size, batch_size
        self.column, self.num_workers, self.seed = column, num_workers, seed
        self.tokenizer = None
        self.blocks: dict[str, torch.Tensor] = {}
        self.stats: dict[str, dict[str, int]] = {}

    def _load(self, split: str, files) -> None:
        sep_id = self.tokenizer.bos_token_id
        if sep_id is None:
            raise ValueError(f"tokenizer at {self.tokenizer_path} has no bos token to separate documents")
        skipped: list[str] = []
        rows = read_rows(files, {self.column: str}, nonempty=(self.column,), on_error=self.on_error, skipped=skipped)
        docs = self.tokenizer([row[self.column] for row in rows], add_special_tokens=False).input_ids
        blocks = pack_blocks(docs, self.block_size, sep_id)
        tokens = sum(len(d) + 1 for d in docs)
        if len(blocks) == 0:
            raise DataError(f"{files}: {tokens} tokens, fewer than one block of {self.block_size}")
        self.blocks[split] = blocks
        self.stats[split] = {"docs": len(docs), "bad_rows": len(skipped), "tokens": tokens, "blocks": len(blocks),
                             "dropped_tokens": tokens - blocks.numel()}
        rank_zero_info(f"TextDataModule {split} ({files}): {len(docs)} documents ({len(skipped)} bad rows "
                       f"skipped), {tokens} tokens -> "
                       f"{len(blocks)} blocks of {self.block_size} ({tokens - blocks.numel()} tail tokens dropped)")

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.blocks:
            raise RuntimeError(f"TextDataModule: call setup() before asking for the {split} dataloader")
        return plain_loader(self.blocks[split], self.batch_size, shuffle, self.seed, self.num_workers, block_batch)

