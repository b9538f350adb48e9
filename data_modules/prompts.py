"""Prompts with verifiable answers for RL and evaluation: batches are dicts of lists, one entry per prompt.

    data = PromptDataModule("world/reasoning/train.jsonl", "world/reasoning/val.jsonl", batch_size=16)
    data.setup("fit"); batch = next(iter(data.train_dataloader()))   # {"prompt": [...16], "answer": [...], ...}

`row_format` (data_modules/formats.py, set by the presets data=gsm8k_prompts, math_prompts, messages_prompts) turns
rows in another layout into prompt/answer rows. Every column of a row travels with it, so rewards receive them as
keyword arguments (`reward(completions, **columns)`).
Under DDP, Lightning's DistributedSampler gives each rank its own prompts; the GRPO module samples a whole group per
prompt, so a group never straddles ranks. `MixedPromptDataModule` mixes reasoning and general prompts in every batch
(R1's RL for all scenarios; rewards are routed by the `kind` column); under DDP its sampler gives each rank a disjoint
share of both kinds itself (experiment=all_scenarios_rl sets `trainer.use_distributed_sampler: false`).
Simplifications: the rollout engine tokenises, so nothing is tokenised here.
"""

from collections.abc import Sequence
from functools import partial

from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from data_modules.rejection import mixed_loader, split_batch
from r1lab.data.io import DataError, RowFormat, collate_columns, read_rows, select_rows
from r1lab.data.prompt_rows import drop_long_prompts, prompt_row_problem
from r1lab.infra.hf import load_tokenizer
from r1lab.infra.resume import ResumableDataLoader

Files = str | Sequence[str]


def read_prompts(files: Files, columns_map: dict[str, str] | None, where: dict[str, list] | None,
                 kind: str | None, on_error: str = "raise", skipped: list[str] | None = None,
                 row_format: RowFormat | None = None) -> list[dict]:
    """Prompt rows with `answer` as text, those `where` selects, `kind` filled in where a row has none; a row with
    an empty answer (unless of kind general) or a countdown row without numbers is a bad row (r1lab.data.io)."""
    rows = read_rows(files, PromptDataModule.columns, rename=columns_map, nonempty=("prompt",), on_error=on_error,
                     skipped=skipped, row_check=partial(prompt_row_problem, kind=kind), row_format=row_format)
    default = {} if kind is None else {"kind": kind}
    return [default | row | {"answer": str(row["answer"])} for row in select_rows(rows, where)]


class PromptDataModule(LightningDataModule):
    """`kind` (e.g. "reasoning") fills the `kind` column of rows without one: rewards are routed by it.

    With `tokenizer_path` and `max_prompt_length`, prompts of more tokens are dropped and counted (the rollout
    engine's context must hold the rendered prompt and its completion). `on_error="skip"` drops bad rows instead of
    stopping. `row_format` converts each row of `train_files` and `val_files` (data_modules/formats.py).
    `stats` after `setup()`: {"train": {rows, bad_rows, too_long, kept}, "val": {...}}.
    """

    columns = {"prompt": str, "answer": (str, int, float)}
    drop_last = True  # training batches are full: a step's prompts x G (module.sampling.n) stays what the config says

    def __init__(self, train_files: Files, val_files: Files | None = None, batch_size: int = 16,
                 val_batch_size: int = 64, val_limit: int | None = None, columns_map: dict[str, str] | None = None,
                 where: dict[str, list] | None = None, num_workers: int = 0, kind: str | None = None,
                 on_error: str = "raise", tokenizer_path: str | None = None, max_prompt_length: int | None = None,
                 row_format: RowFormat | None = None):
        super().__init__()
        if max_prompt_length is not None and tokenizer_path is None:
            raise ValueError("max_prompt_length needs tokenizer_path (prompt lengths are counted in tokens)")
        self.files = {"train": train_files, "val": val_files}
        self.batch_size, self.val_batch_size, self.val_limit = batch_size, val_batch_size, val_limit
        self.columns_map, self.where, self.num_workers, self.kind = columns_map, where, num_workers, kind
        self.on_error, self.tokenizer_path, self.max_prompt_length = on_error, tokenizer_path, max_prompt_length
        self.row_format = row_format
        self.tokenizer = None
        self.rows: dict[str, list[dict]] = {}
        self.stats: dict[str, dict[str, int]] = {}

    def _read(self, split: str, files: Files, where: dict[str, list] | None, kind: str | None,
              row_format: RowFormat | None) -> list[dict]:
        """Rows of one split, bad rows (on_error=skip) and over-long prompts dropped, counted in `stats` and logged."""
        skipped: list[str] = []
        rows = read_prompts(files, self.columns_map, where, kind, self.on_error, skipped, row_format)
        if self.max_prompt_length is not None and self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.tokenizer_path)
        kept, too_long = drop_long_prompts(rows, self.tokenizer, self.max_prompt_length)
        self.stats[split] = {"rows": len(rows) + len(skipped), "bad_rows": len(skipped), "too_long": too_long,
                             "kept": len(kept)}
        if not kept:
            raise DataError(f"{files}: no usable prompts left ({self.stats[split]}); raise max_prompt_length")
        longer = f" and {too_long} longer than {self.max_prompt_length} tokens" if self.max_prompt_length else ""
        rank_zero_info(f"{type(self).__name__} {split} ({files}): kept {len(kept)} prompts, dropped {len(skipped)} bad "
                       f"rows{longer}")
        return kept

    def setup(self, stage: str | None = None) -> None:
        for split, files in self.files.items():
            if files is None or split in self.rows:
                continue
            rows = self._read(split, files, self.where, self.kind, self.row_format)
            self.rows[split] = rows[: self.val_limit] if split == "val" and self.val_limit else rows
        if self.drop_last and "train" in self.rows and len(self.rows["train"]) < self.batch_size:
            raise DataError(f"{self.files['train']}: {len(self.rows['train'])} training prompts, fewer than one batch "
                            f"(batch_size={self.batch_size}; the last incomplete batch is dropped): lower batch_size")

    def train_dataloader(self) -> DataLoader:
        return ResumableDataLoader(self.rows["train"], batch_size=self.batch_size, shuffle=True, drop_last=True,
                          collate_fn=collate_columns, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader | list:
        if "val" not in self.rows:
            return []
        return DataLoader(self.rows["val"], batch_size=self.val_batch_size, shuffle=False,
                          collate_fn=collate_columns, num_workers=self.num_workers)


class MixedPromptDataModule(PromptDataModule):
    """Reasoning prompts (`train_files`, selected by `where`) and general ones (`general_files`, all rows) in every
    training batch at `ratio` reasoning:general (R1's all-scenario RL); validation on `val_files` as PromptDataModule.

    Rows without a `kind` column get "reasoning" and "general"; `row_format` converts reasoning rows (train and val),
    `general_format` general ones (data_modules/formats.py). An epoch passes once over the reasoning prompts and
    general ones are cycled (data_modules.rejection.MixedBatchSampler).
    """

    drop_last = False  # MixedBatchSampler tops the last batch up

    def __init__(self, train_files: Files, general_files: Files, val_files: Files | None = None, ratio: float = 1.0,
                 batch_size: int = 16, val_batch_size: int = 64, val_limit: int | None = None,
                 columns_map: dict[str, str] | None = None, where: dict[str, list] | None = None,
                 num_workers: int = 0, seed: int = 0, on_error: str = "raise", tokenizer_path: str | None = None,
                 max_prompt_length: int | None = None, row_format: RowFormat | None = None,
                 general_format: RowFormat | None = None):
        super().__init__(train_files, val_files, batch_size, val_batch_size, val_limit, columns_map, where,
                         num_workers, kind="reasoning", on_error=on_error, tokenizer_path=tokenizer_path,
                         max_prompt_length=max_prompt_length, row_format=row_format)
        split_batch(batch_size, ratio)
        self.general_files, self.ratio, self.seed, self.general_format = general_files, ratio, seed, general_format

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if "general" not in self.rows:
            self.rows["general"] = self._read("general", self.general_files, None, "general", self.general_format)

    def train_dataloader(self) -> DataLoader:
        if "general" not in self.rows:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for the train dataloader")
        return mixed_loader(self, self.rows["train"], self.rows["general"], collate_columns)
