"""The Lightning callbacks and the checkpoint plugin shared by every stage (kept apart from `r1lab.infra.progress` and
`r1lab.infra.atomic`, so that r1lab.eval and r1lab.sample start without importing Lightning).

`HFExport` writes the stage's artifact at the end of fit: the trained model and its tokenizer as a Hugging Face
directory (atomically), which the next stage's `model.path` points at. A LoRA model (`module/peft=lora`) is written
merged, a plain model that loads without `peft`, and its adapter alone beside it in `adapter/`.
"""

import json
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info

from r1lab.infra.atomic import write_atomic
from r1lab.infra.deepspeed import full_state_dict, is_zero3
from r1lab.infra.hf import save_pretrained_atomic
from r1lab.infra.peft import is_peft, merged_weights, save_adapter_atomic
from r1lab.infra.progress import FILE, Progress, first_metric, total_steps


class HFExport(L.Callback):
    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.interrupted:
            return
        if is_peft(pl_module.model):
            if trainer.is_global_zero:
                merged = dict(merged_weights(pl_module.model))
                save_pretrained_atomic(pl_module.model.get_base_model(), pl_module.tokenizer, self.out_dir, merged)
                save_adapter_atomic(pl_module.model, self.out_dir.parent / "adapter")
                rank_zero_info(f"Saved the merged model to {self.out_dir} and the adapter to {self.out_dir.parent}/adapter")
            return
        # under DeepSpeed ZeRO-3 each rank holds a shard: all ranks gather, layer by layer, and rank 0 writes
        state = full_state_dict(pl_module.model) if is_zero3(pl_module.model) else None
        if trainer.is_global_zero:
            save_pretrained_atomic(pl_module.model, pl_module.tokenizer, self.out_dir, state_dict=state)
            rank_zero_info(f"Saved the model in Hugging Face format to {self.out_dir}")


class PromptLedger(L.Callback):
    """Append the ids of the rows each rank trains on at each step to `<out_dir>/prompts.rank<R>.jsonl`.

    Answers "which prompts did step N see?" after the fact, on every rank (and lets a test check that DDP neither
    drops nor repeats prompts). Add it with `+callbacks.ledger._target_=r1lab.infra.callbacks.PromptLedger
    +callbacks.ledger.out_dir=...`.
    """

    def __init__(self, out_dir: str, id_column: str = "id"):
        self.out_dir, self.id_column = Path(out_dir), id_column

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        record = {"step": trainer.global_step, "rank": trainer.global_rank, "ids": list(batch[self.id_column])}
        with open(self.out_dir / f"prompts.rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


class ProgressLine(L.Callback):
    """Reports the training step (of `trainer.max_steps`, else the estimated steps) and the first of `metrics` found
    in `trainer.callback_metrics` after each batch, at most every `every_s` seconds, and at the end; rank zero only.
    `progress.json` goes to `out_dir` (default: `trainer.default_root_dir`). On a terminal where Lightning's progress
    bar is on, the bar shows the same live and no line is printed (the file is still written)."""

    def __init__(self, task: str, every_s: float = 10.0, metrics: list[str] | None = None, out_dir: str | None = None):
        self.task, self.every_s, self.metrics, self.out_dir = task, every_s, list(metrics or []), out_dir
        self.progress: Progress | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        estimated = None if trainer.max_steps > 0 else trainer.estimated_stepping_batches   # inf: no length known
        bar = trainer.progress_bar_callback is not None and sys.stdout.isatty()
        self.progress = Progress(self.task, total_steps(trainer.max_steps, estimated),
                                 Path(self.out_dir or trainer.default_root_dir) / FILE, every_s=self.every_s,
                                 echo=not bar)

    def _report(self, trainer: L.Trainer, final: bool = False) -> None:
        if self.progress is not None:
            metric, value = first_metric(trainer.callback_metrics, self.metrics)
            self.progress.update(trainer.global_step, metric, value, final=final)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self._report(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, final=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    """`torch.save` to a temporary file next to the checkpoint, fsync, rename (local paths; others as Lightning)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        write_atomic(path, lambda f: torch.save(checkpoint, f))
