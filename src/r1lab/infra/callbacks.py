"""Callbacks shared by every stage.

`HFExport` writes the stage's artifact at the end of fit: the trained model and its tokenizer as a Hugging Face
directory (atomically), which the next stage's `model.path` points at. A LoRA model (`module/peft=lora`) is written
merged, a plain model that loads without `peft`, and its adapter alone beside it in `adapter/`.
"""

import json
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from r1lab.infra.deepspeed import full_state_dict, is_zero3
from r1lab.infra.hf import save_pretrained_atomic
from r1lab.infra.peft import is_peft, merged_weights, save_adapter_atomic


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
