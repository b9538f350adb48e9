"""Callbacks shared by every stage.

`HFExport` writes the stage's artifact at the end of fit: the trained model and its tokenizer as a Hugging Face
directory (atomically), which the next stage's `model.path` points at.
"""

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from r1lab.hf import save_pretrained_atomic


class HFExport(L.Callback):
    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and not trainer.interrupted:
            save_pretrained_atomic(pl_module.model, pl_module.tokenizer, self.out_dir)
            rank_zero_info(f"Saved the model in Hugging Face format to {self.out_dir}")
