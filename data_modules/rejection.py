"""Rejection-sampled SFT data (R1 stage 3): the sampler's shards, mixed with general chat rows in every batch.

    data = RejectionSampledDataModule("artifacts/runs/rejection_sampling", "world/general_sft/train.jsonl", "runs/pretrain/model")
    data.setup("fit"); batch = next(iter(data.train_dataloader()))  # batch_size=16, ratio=3: 12 reasoning + 4 general

Reads `manifest.json` of a `python -m r1lab.sample` run and the shards it lists (one listed but missing, or rows
missing from one, is an error), plus general rows (GeneralDataModule's files). A general response in the
`<reasoning_process>`/`<summary>` layout whose summary is trivial (at most `trivial_chars` characters) is kept as the
summary alone: R1 gave simple queries no chain of thought. Every training batch holds round(batch_size * ratio /
(ratio + 1)) reasoning rows and the rest general (R1: ~600k reasoning, ~200k general); an epoch passes once over the
reasoning rows (the last batch topped up from a fresh permutation), general rows are cycled.
Under DDP each rank trains on its own disjoint share of both kinds (MixedBatchSampler); the experiments that use this
module set `trainer.use_distributed_sampler: false`, as Lightning cannot put a DistributedSampler into this sampler.
`general_format` and `val_format` convert general and validation rows kept in another layout (data_modules/formats.py,
e.g. `+data/format@data.general_format=messages_chat`); the shards are ours and read as they are.
A training batch is two parts, its reasoning rows and its general rows, each padded to its own longest row
(`pad_parts`; SFTModule weighs the parts' losses by their tokens, so the loss is the whole batch's token mean): padded
together, the short general rows made ~30% of a batch's positions padding (bench/RESULTS_padding.md).
Simplifications: no length bucketing inside mixed batches (it changed which demo findings held: docs/LOG.md).
"""

import json
import math
from functools import partial
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from data_modules.chat import ChatDataModule, Files
from r1lab.data.encode import encode_chat_rows, pad_parts
from r1lab.data.io import DataError, RowFormat, read_rows
from r1lab.infra.resume import ResumableDataLoader
from r1lab.maths.formats import SUMMARY, extract_tag, is_cold_start_format


def drop_trivial_cot(response: str, max_chars: int) -> str:
    """The summary alone when a cold-start-layout response's summary has at most `max_chars` characters.

    >>> drop_trivial_cot("<reasoning_process>Capitalise it.</reasoning_process><summary>ABC</summary>", 40)
    'ABC'
    >>> drop_trivial_cot("<reasoning_process>Long.</reasoning_process><summary>ABC</summary>", 2)[:19]
    '<reasoning_process>'
    >>> drop_trivial_cot("SIKIR", 40)
    'SIKIR'
    """
    if not is_cold_start_format(response):
        return response
    summary = extract_tag(response, SUMMARY)
    return summary if len(summary) <= max_chars else response


def split_batch(batch_size: int, ratio: float) -> tuple[int, int]:
    """(reasoning, general) rows per batch for a reasoning:general `ratio`; at least one of each.

    >>> split_batch(16, 3.0), split_batch(4, 1.0), split_batch(2, 100.0)
    ((12, 4), (2, 2), (1, 1))
    """
    if batch_size < 2 or ratio <= 0:
        raise ValueError(f"mixing needs batch_size >= 2 and ratio > 0, got {batch_size} and {ratio}")
    reasoning = min(max(round(batch_size * ratio / (ratio + 1)), 1), batch_size - 1)
    return reasoning, batch_size - reasoning


def permutations(n: int, total: int, generator: torch.Generator) -> list[int]:
    """`total` indices from fresh permutations of range(n), one after another."""
    out: list[int] = []
    while len(out) < total:
        out += torch.randperm(n, generator=generator).tolist()
    return out[:total]


def data_parallel_rank(trainer) -> tuple[int, int]:
    """(rank, number of ranks) among which `trainer` splits the data: what Lightning gives a DistributedSampler
    (`trainer.distributed_sampler_kwargs`); (0, 1) without a trainer or with a single-process strategy."""
    kwargs = None if trainer is None else trainer.distributed_sampler_kwargs
    return (0, 1) if kwargs is None else (kwargs["rank"], kwargs["num_replicas"])


def mixed_loader(module, reasoning: list, general: list, collate_fn) -> DataLoader:
    """A mixed module's training loader: this rank's batches of `module.ratio` reasoning rows to one general row."""
    rank, world_size = data_parallel_rank(module.trainer)
    batches = MixedBatchSampler(len(reasoning), len(general), module.batch_size, module.ratio, module.seed, rank,
                                world_size)
    return ResumableDataLoader(reasoning + general, batch_sampler=batches, collate_fn=collate_fn,
                               num_workers=module.num_workers)


class MixedBatchSampler:
    """Batches of indices into `reasoning + general` (general indices offset by n_reasoning), each with a fixed
    number of each kind, for data-parallel rank `rank` of `world_size`.

    Each epoch draws one seed from a generator seeded by `seed`, which so advances identically on every rank (and is
    what ResumableDataLoader saves). From it every rank draws the same permutation of each kind and keeps every
    `world_size`-th row from its `rank`-th: the ranks' shares are disjoint and differ in size by one row at most. A
    rank then passes once over its reasoning share in its own order (its last batch topped up from a fresh
    permutation of the share) and cycles its general share; every rank yields len(self) batches, so DDP's
    collectives stay in step. One rank of one is the single-process sampler.

    Not a `BatchSampler`: under DDP, Lightning would put a DistributedSampler over `reasoning + general` into one,
    which splits the kinds unevenly across ranks (unequal batch counts: a hang); this sampler splits them itself.
    """

    def __init__(self, n_reasoning: int, n_general: int, batch_size: int, ratio: float, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not one of world_size={world_size} ranks")
        if min(n_reasoning, n_general) < world_size:
            raise ValueError(f"{n_reasoning} reasoning and {n_general} general rows cannot give each of {world_size} "
                             "ranks rows of both kinds")
        self.n_reasoning, self.n_general, self.rank, self.world_size = n_reasoning, n_general, rank, world_size
        self.per_reasoning, self.per_general = split_batch(batch_size, ratio)
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(math.ceil(self.n_reasoning / self.world_size) / self.per_reasoning)

    def _rank_rows(self, n: int, total: int, shared: torch.Generator, own: torch.Generator) -> list[int]:
        """`total` rows of this rank's share of range(n), in this rank's order (then fresh permutations of it)."""
        share = torch.randperm(n, generator=shared)[self.rank::self.world_size].tolist()
        return [share[i] for i in permutations(len(share), total, own)]

    def __iter__(self):
        epoch_seed = int(torch.randint(2**62, (), generator=self.generator))
        shared = torch.Generator().manual_seed(epoch_seed)                  # the same on every rank: the split
        own = torch.Generator().manual_seed(epoch_seed + 1 + self.rank)     # this rank's order and top-ups
        r = self._rank_rows(self.n_reasoning, len(self) * self.per_reasoning, shared, own)
        g = self._rank_rows(self.n_general, len(self) * self.per_general, shared, own)
        for b in range(len(self)):
            general = g[b * self.per_general:(b + 1) * self.per_general]
            yield r[b * self.per_reasoning:(b + 1) * self.per_reasoning] + [self.n_reasoning + i for i in general]


def shard_files(sample_dir: Path) -> tuple[list[Path], int]:
    """The shard files a sampling run's manifest lists (those with rows), and the number of rows it recorded."""
    manifest_path = sample_dir / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} not found: run `python -m r1lab.sample output_dir={sample_dir}` "
                                "to the end first (a run without a manifest is unfinished)")
    manifest = json.loads(manifest_path.read_text())
    files = [sample_dir / s["file"] for s in manifest["shards"] if s["rows"]]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{manifest_path}: listed shards are missing: {missing}")
    if not files:
        raise DataError(f"{manifest_path}: no sample was accepted ({manifest['counts']})")
    return files, manifest["rows"]


class RejectionSampledDataModule(ChatDataModule):
    """Chat SFT on rejection-sampled reasoning rows mixed with general rows at `ratio` (reasoning:general) per batch.

    `stats` after `setup()`: {"train": reasoning rows, "general": general rows, "val": ...}, as ChatDataModule's.
    """

    layout_hint = ("Validation responses must be `<reasoning_process>...</reasoning_process><summary>...</summary>`; "
                   "GSM8K, MATH or chat `messages` rows: +data/format@data.val_format=gsm8k_cold_start (or "
                   "math_cold_start, messages_chat).")

    def __init__(self, sample_dir: str, general_files: Files, tokenizer_path: str, val_files: Files | None = None,
                 ratio: float = 3.0, trivial_chars: int = 40, max_length: int = 512, batch_size: int = 16,
                 num_workers: int = 0, seed: int = 0, on_error: str = "raise",
                 general_format: RowFormat | None = None, val_format: RowFormat | None = None):
        super().__init__(None, val_files, tokenizer_path, max_length, batch_size, num_workers,
                         response_check=is_cold_start_format, seed=seed, on_error=on_error)
        self.formats, self.general_format = {"train": None, "val": val_format}, general_format
        split_batch(batch_size, ratio)
        self.sample_dir, self.general_files = Path(sample_dir), general_files
        self.ratio, self.trivial_chars = ratio, trivial_chars

    def setup(self, stage: str | None = None) -> None:
        if self.files["train"] is None:
            self.files["train"], self.expected_rows = shard_files(self.sample_dir)
        super().setup(stage)
        held = self.stats["train"]["rows"] + self.stats["train"]["bad_rows"]
        if held != self.expected_rows:
            raise DataError(f"{self.sample_dir}: the shards hold {held} rows, the manifest "
                            f"{self.expected_rows}: a shard changed after sampling")
        if "general" not in self.examples:
            skipped: list[str] = []
            rows = read_rows(self.general_files, self.columns, nonempty=("prompt", "response"), on_error=self.on_error,
                             skipped=skipped, row_format=self.general_format)
            rows = [row | {"response": drop_trivial_cot(row["response"], self.trivial_chars)} for row in rows]
            self.examples["general"], self.stats["general"] = encode_chat_rows(self.tokenizer, rows, self.max_length)
            self.stats["general"]["bad_rows"] = len(skipped)
            if not self.examples["general"]:
                raise DataError(f"{self.general_files}: no usable general rows ({self.stats['general']})")
            rank_zero_info(f"{type(self).__name__} general ({self.general_files}): {self.stats['general']}")

    def train_dataloader(self) -> DataLoader:
        if "general" not in self.examples:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for the train dataloader")
        return mixed_loader(self, self.examples["train"], self.examples["general"],
                            partial(pad_parts, pad_id=self.tokenizer.pad_token_id,
                                    sizes=split_batch(self.batch_size, self.ratio)))
