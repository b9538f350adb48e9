"""Chat SFT data: (prompt, response) rows as one user turn and one assistant turn, loss on the response only.

    data = ChatDataModule("world/general_sft/train.jsonl", "world/general_sft/val.jsonl", "runs/pretrain/model")
    data.setup("fit"); batch = next(iter(data.train_dataloader()))  # input_ids, attention_mask, labels: [B, T]

Hydra builds it from configs/data/*.yaml. Rows come through r1lab.data.io.read_rows (jsonl, parquet, `datasets`);
`columns_map` renames the user's columns to `prompt`/`response`; `row_format` (data_modules/formats.py, set by the
data presets) converts rows in another layout, e.g. GSM8K's or chat `messages`. Rows longer than `max_length`
tokens, or whose response fails `response_check`, are dropped and counted in `stats`, never truncated.
Simplifications: single-turn chats only, no system prompt (the `messages` presets put one before the user's text);
everything is tokenised up front in `setup()`.
"""

from collections.abc import Callable, Sequence
from functools import partial

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from data_modules.common import SplitLoaders, bucket_batches, bucketed_loader, padding_fraction
from r1lab.data.encode import encode_chat_rows, pad_batch
from r1lab.data.io import DataError, RowFormat, read_rows

Files = str | Sequence[str]


class ChatDataModule(SplitLoaders, LightningDataModule):
    """Prompt/response rows -> right-padded, length-bucketed batches {input_ids, attention_mask, labels} [B, T].

    `stats` after `setup()`: {"train": {rows, kept, too_long, bad_format, bad_rows, tokens, max_tokens}, "val": ...};
    `bad_rows` counts the rows `on_error="skip"` dropped (r1lab.data.io), not included in `rows`.
    """

    columns = {"prompt": str, "response": str}
    layout_hint = ""  # what a response must look like, said when every row fails `response_check`

    def __init__(self, train_files: Files, val_files: Files | None, tokenizer_path: str, max_length: int = 512,
                 batch_size: int = 16, num_workers: int = 0, columns_map: dict[str, str] | None = None,
                 response_check: Callable[[str], bool] | None = None, seed: int = 0, on_error: str = "raise",
                 row_format: RowFormat | None = None):
        super().__init__()
        self.on_error = on_error
        self.files = {"train": train_files, "val": val_files}
        self.formats = {"train": row_format, "val": row_format}
        self.tokenizer_path, self.max_length, self.batch_size = tokenizer_path, max_length, batch_size
        self.num_workers, self.columns_map, self.seed = num_workers, columns_map, seed
        self.response_check = response_check
        self.tokenizer = None
        self.examples: dict[str, list[dict]] = {}
        self.stats: dict[str, dict[str, int]] = {}

    def _load(self, split: str, files: Files) -> None:
        skipped, locations = [], []
        rows = read_rows(files, self.columns, self.columns_map, nonempty=("prompt", "response"),
                         on_error=self.on_error, skipped=skipped, row_format=self.formats[split], locations=locations)
        examples, stats = encode_chat_rows(self.tokenizer, rows, self.max_length, self.response_check)
        stats["bad_rows"] = len(skipped)
        if not examples:
            raise DataError(self._nothing_left(files, rows, locations, stats))
        self.examples[split], self.stats[split] = examples, stats
        self._report(split, files)

    def _nothing_left(self, files: Files, rows: list[dict], locations: list[str], stats: dict) -> str:
        """Why no row of `files` is usable: too long, or responses not in the layout (the first one shown)."""
        message = f"{files}: no usable rows left ({stats})"
        if not stats["bad_format"]:
            return f"{message}; raise max_length (now {self.max_length}) or fix the data"
        i = next(i for i, row in enumerate(rows) if not self.response_check(row["response"]))
        return (f"{message}: {stats['bad_format']} of {stats['rows']} responses are not in the layout "
                f"{type(self).__name__} expects; first at {locations[i]}: response {rows[i]['response'][:80]!r}. "
                f"{self.layout_hint}").strip()

    def _report(self, split: str, files: Files) -> None:
        """One log line per split: what was dropped and why, and the padding that bucketing leaves."""
        s, lengths = self.stats[split], [len(e["input_ids"]) for e in self.examples[split]]
        shuffled = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(self.seed)).tolist()
        plain = [shuffled[i:i + self.batch_size] for i in range(0, len(shuffled), self.batch_size)]
        bucketed = bucket_batches(shuffled, lengths, self.batch_size)
        rank_zero_info(
            f"{type(self).__name__} {split} ({files}): kept {s['kept']}/{s['rows']} rows, dropped {s['too_long']} "
            f"longer than {self.max_length} tokens and {s['bad_format']} badly formatted; {s['bad_rows']} bad rows "
            f"skipped; {s['tokens']} tokens; "
            f"padding {padding_fraction(bucketed, lengths):.1%} bucketed, "
            f"{padding_fraction(plain, lengths):.1%} in random order"
        )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.examples:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for the {split} dataloader")
        data = self.examples[split]
        return bucketed_loader(data, [len(e["input_ids"]) for e in data], self.batch_size, shuffle, self.seed,
                               self.num_workers, partial(pad_batch, pad_id=self.tokenizer.pad_token_id))



class GeneralDataModule(ChatDataModule):
    """Non-reasoning chat data (the general-SFT mix of the R1 pipeline): no response format check."""
