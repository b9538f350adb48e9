"""Cold-start SFT data: a few thousand long chains of thought in a readable layout, taught before reasoning RL.

    data = ColdStartDataModule("world/cold_start/train.jsonl", "world/cold_start/val.jsonl", "runs/pretrain/model")

Every response must be exactly `<reasoning_process>X</reasoning_process><summary>Y</summary>` (DeepSeek-R1's
cold-start layout, see r1lab.maths.formats.cold_start_response); rows that are not are rejected and counted as
`bad_format` in `stats` instead of teaching the model a broken layout.
Simplification: the check is structural only; whether the summary's answer is right is the data builder's job.
"""

from data_modules.chat import ChatDataModule, Files
from r1lab.maths.formats import is_cold_start_format


class ColdStartDataModule(ChatDataModule):
    """Chat SFT on cold-start rows; responses not in the cold-start layout are rejected and counted."""

    def __init__(self, train_files: Files, val_files: Files | None, tokenizer_path: str, max_length: int = 512,
                 batch_size: int = 16, num_workers: int = 0, columns_map: dict[str, str] | None = None, seed: int = 0,
                 on_error: str = "raise"):
        super().__init__(train_files, val_files, tokenizer_path, max_length, batch_size, num_workers, columns_map,
                         response_check=is_cold_start_format, seed=seed, on_error=on_error)
