"""Shared pieces of the DataModules: length bucketing and the train/val loader pair; the encoding of rows lives in
`r1lab.data.encode`. Nothing here is a LightningDataModule.

- `BucketBatchSampler` groups rows of similar length: padding costs real compute on CPU, and packing with a
  block-diagonal mask is slower still there (dense attention over the packed row).
"""

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler, SequentialSampler

from r1lab.infra.hf import load_tokenizer
from r1lab.infra.resume import ResumableDataLoader


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


def plain_loader(data: Sequence, batch_size: int, shuffle: bool, seed: int, num_workers: int,
                 collate_fn: Callable) -> DataLoader:
    """A loader of `data` in batches of `batch_size`. Training (`shuffle`) draws a seeded random order and keeps its
    place in a checkpoint; validation reads in order."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    loader = ResumableDataLoader if shuffle else DataLoader  # a training loader's position is checkpointed
    return loader(data, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=num_workers,
                  collate_fn=collate_fn)


def bucketed_loader(data: Sequence, lengths: Sequence[int], batch_size: int, shuffle: bool, seed: int,
                    num_workers: int, collate_fn: Callable) -> DataLoader:
    """A loader of length-bucketed batches of `data` (`lengths[i]`: the positions row i pads its batch to). Training
    (`shuffle`) draws a seeded random order and keeps its place in a checkpoint; validation reads in order."""
    sampler = RandomSampler(data, generator=torch.Generator().manual_seed(seed)) if shuffle else SequentialSampler(data)
    batches = BucketBatchSampler(sampler, batch_size, drop_last=False, lengths=lengths, shuffle=shuffle, seed=seed)
    loader = ResumableDataLoader if shuffle else DataLoader  # a training loader's position is checkpointed
    return loader(data, batch_sampler=batches, num_workers=num_workers, collate_fn=collate_fn)


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
