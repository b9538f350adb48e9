"""Prompts with verifiable answers for RL and evaluation: batches are dicts of lists, one entry per prompt.

    data = PromptDataModule("world/reasoning/train.jsonl", "world/reasoning/val.jsonl", batch_size=16)
    data.setup("fit"); batch = next(iter(data.train_dataloader()))   # {"prompt": [...16], "answer": [...], ...}

Every column of a row travels with it, so rewards receive them as keyword arguments (`reward(completions, **columns)`).
Under DDP, Lightning's DistributedSampler gives each rank its own prompts; the GRPO module samples a whole group per
prompt, so a group never straddles ranks. Simplification: the rollout engine tokenises, so nothing is tokenised here.
"""

from collections.abc import Sequence

from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from r1lab.dataio import read_rows, select_rows

Files = str | Sequence[str]


def collate_columns(rows: list[dict]) -> dict[str, list]:
    """Rows -> columns (missing values become None, so every column has one entry per row).

    >>> collate_columns([{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": "2", "task": "t"}])
    {'prompt': ['a', 'b'], 'answer': ['1', '2'], 'task': [None, 't']}
    """
    names = list(dict.fromkeys(name for row in rows for name in row))
    return {name: [row.get(name) for row in rows] for name in names}


class PromptDataModule(LightningDataModule):
    columns = {"prompt": str, "answer": (str, int, float)}

    def __init__(self, train_files: Files, val_files: Files | None = None, batch_size: int = 16,
                 val_batch_size: int = 64, val_limit: int | None = None, columns_map: dict[str, str] | None = None,
                 where: dict[str, list] | None = None, num_workers: int = 0):
        super().__init__()
        self.files = {"train": train_files, "val": val_files}
        self.batch_size, self.val_batch_size, self.val_limit = batch_size, val_batch_size, val_limit
        self.columns_map, self.where, self.num_workers = columns_map, where, num_workers
        self.rows: dict[str, list[dict]] = {}

    def setup(self, stage: str | None = None) -> None:
        for split, files in self.files.items():
            if files is None or split in self.rows:
                continue
            rows = read_rows(files, self.columns, rename=self.columns_map, nonempty=("prompt",))
            rows = [row | {"answer": str(row["answer"])} for row in select_rows(rows, self.where)]
            self.rows[split] = rows[: self.val_limit] if split == "val" and self.val_limit else rows
            rank_zero_info(f"PromptDataModule {split}: {len(self.rows[split])} prompts from {files}")

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.rows["train"], batch_size=self.batch_size, shuffle=True, drop_last=True,
                          collate_fn=collate_columns, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader | list:
        if "val" not in self.rows:
            return []
        return DataLoader(self.rows["val"], batch_size=self.val_batch_size, shuffle=False,
                          collate_fn=collate_columns, num_workers=self.num_workers)
