"""Prompts with verifiable answers for RL and evaluation: batches are dicts of lists, one entry per prompt.

    data = PromptDataModule("world/reasoning/train.jsonl", "world/reasoning/val.jsonl", batch_size=16)
    data.setup("fit"); batch = next(iter(data.train_dataloader()))   # {"prompt": [...16], "answer": [...], ...}

Every column of a row travels with it, so rewards receive them as keyword arguments (`reward(completions, **columns)`).
Under DDP, Lightning's DistributedSampler gives each rank its own prompts; the GRPO module samples a whole group per
prompt, so a group never straddles ranks. `MixedPromptDataModule` mixes reasoning and general prompts in every batch
(R1's RL for all scenarios; rewards are routed by the `kind` column).
Simplifications: the rollout engine tokenises, so nothing is tokenised here; the mixed batch sampler is not split
across DDP ranks.
"""

from collections.abc import Sequence

from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from data_modules.rejection import MixedBatchSampler, split_batch
from r1lab.dataio import read_rows, select_rows

Files = str | Sequence[str]


def collate_columns(rows: list[dict]) -> dict[str, list]:
    """Rows -> columns (missing values become None, so every column has one entry per row).

    >>> collate_columns([{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": "2", "task": "t"}])
    {'prompt': ['a', 'b'], 'answer': ['1', '2'], 'task': [None, 't']}
    """
    names = list(dict.fromkeys(name for row in rows for name in row))
    return {name: [row.get(name) for row in rows] for name in names}


def read_prompts(files: Files, columns_map: dict[str, str] | None, where: dict[str, list] | None,
                 kind: str | None) -> list[dict]:
    """Prompt rows with `answer` as text, those `where` selects, `kind` filled in where a row has none."""
    rows = read_rows(files, PromptDataModule.columns, rename=columns_map, nonempty=("prompt",))
    default = {} if kind is None else {"kind": kind}
    return [default | row | {"answer": str(row["answer"])} for row in select_rows(rows, where)]


class PromptDataModule(LightningDataModule):
    """`kind` (e.g. "reasoning") fills the `kind` column of rows without one: rewards are routed by it."""

    columns = {"prompt": str, "answer": (str, int, float)}

    def __init__(self, train_files: Files, val_files: Files | None = None, batch_size: int = 16,
                 val_batch_size: int = 64, val_limit: int | None = None, columns_map: dict[str, str] | None = None,
                 where: dict[str, list] | None = None, num_workers: int = 0, kind: str | None = None):
        super().__init__()
        self.files = {"train": train_files, "val": val_files}
        self.batch_size, self.val_batch_size, self.val_limit = batch_size, val_batch_size, val_limit
        self.columns_map, self.where, self.num_workers, self.kind = columns_map, where, num_workers, kind
        self.rows: dict[str, list[dict]] = {}

    def setup(self, stage: str | None = None) -> None:
        for split, files in self.files.items():
            if files is None or split in self.rows:
                continue
            rows = read_prompts(files, self.columns_map, self.where, self.kind)
            self.rows[split] = rows[: self.val_limit] if split == "val" and self.val_limit else rows
            rank_zero_info(f"{type(self).__name__} {split}: {len(self.rows[split])} prompts from {files}")

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.rows["train"], batch_size=self.batch_size, shuffle=True, drop_last=True,
                          collate_fn=collate_columns, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader | list:
        if "val" not in self.rows:
            return []
        return DataLoader(self.rows["val"], batch_size=self.val_batch_size, shuffle=False,
                          collate_fn=collate_columns, num_workers=self.num_workers)


class MixedPromptDataModule(PromptDataModule):
    """Reasoning prompts (`train_files`, selected by `where`) and general ones (`general_files`, all rows) in every
    training batch at `ratio` reasoning:general (R1's all-scenario RL); validation on `val_files` as PromptDataModule.

    Rows without a `kind` column get "reasoning" and "general"; an epoch passes once over the reasoning prompts and
    general ones are cycled (data_modules.rejection.MixedBatchSampler).
    """

    def __init__(self, train_files: Files, general_files: Files, val_files: Files | None = None, ratio: float = 1.0,
                 batch_size: int = 16, val_batch_size: int = 64, val_limit: int | None = None,
                 columns_map: dict[str, str] | None = None, where: dict[str, list] | None = None,
                 num_workers: int = 0, seed: int = 0):
        super().__init__(train_files, val_files, batch_size, val_batch_size, val_limit, columns_map, where,
                         num_workers, kind="reasoning")
        split_batch(batch_size, ratio)
        self.general_files, self.ratio, self.seed = general_files, ratio, seed

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if "general" not in self.rows:
            self.rows["general"] = read_prompts(self.general_files, self.columns_map, None, "general")
            rank_zero_info(f"{type(self).__name__} general: {len(self.rows['general'])} prompts from "
                           f"{self.general_files}")

    def train_dataloader(self) -> DataLoader:
        if "general" not in self.rows:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for the train dataloader")
        reasoning, general = self.rows["train"], self.rows["general"]
        batches = MixedBatchSampler(len(reasoning), len(general), self.batch_size, self.ratio, self.seed)
        return DataLoader(reasoning + general, batch_sampler=batches, collate_fn=collate_columns,
                          num_workers=self.num_workers)
