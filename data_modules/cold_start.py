"""Cold-start SFT data: a few thousand long chains of thought in a readable layout, taught before reasoning RL.

    data = ColdStartDataModule("world/cold_start/train.jsonl", "world/cold_start/val.jsonl", "runs/pretrain/model")

Every response must be exactly `<reasoning_process>X</reasoning_process><summary>Y</summary>` (DeepSeek-R1's
cold-start layout, see r1lab.maths.formats.cold_start_response); rows that are not are rejected and counted as
`bad_format` in `stats` instead of teaching the model a broken layout. Rows in other layouts come in through the
presets: `data=gsm8k_cold_start` and `data=math_cold_start` write GSM8K and MATH solutions in this layout
(data_modules/formats.py); plain prompt/response rows belong to `data=general` (GeneralDataModule).
Simplification: the check is structural only; whether the summary's answer is right is the data builder's job.
"""

from data_modules.chat import ChatDataModule, Files
from r1lab.data.io import RowFormat
from r1lab.maths.formats import is_cold_start_format

COLD_START_HINT = (
    "Each response must be `<reasoning_process>...</reasoning_process><summary>...</summary>` and nothing else "
    "(r1lab.maths.formats.cold_start_response). Plain prompt/response rows: data=general "
    "(data_modules.GeneralDataModule); GSM8K rows (question, answer ending in '#### n'): data=gsm8k_cold_start; MATH "
    "rows (problem, solution with \\boxed{}): data=math_cold_start; chat `messages` rows: data=messages_cold_start."
)


class ColdStartDataModule(ChatDataModule):
    """Chat SFT on cold-start rows; responses not in the cold-start layout are rejected and counted."""

    layout_hint = COLD_START_HINT

    def __init__(self, train_files: Files, val_files: Files | None, tokenizer_path: str, max_length: int = 512,
                 batch_size: int = 16, num_workers: int = 0, columns_map: dict[str, str] | None = None, seed: int = 0,
                 on_error: str = "raise", row_format: RowFormat | None = None):
        super().__init__(train_files, val_files, tokenizer_path, max_length, batch_size, num_workers, columns_map,
                         response_check=is_cold_start_format, seed=seed, on_error=on_error, row_format=row_format)
