"""SFTModule: supervised fine-tuning of a causal LM (cold start, rejection-sampling SFT, distillation, pre-training).

Loss is next-token cross-entropy over the label tokens the data module leaves unmasked: the assistant's tokens for
chat data, every token for raw text (how the demo's base model is pre-trained). The backbone is loaded from a local
Hugging Face directory in `configure_model()` (wrapped with LoRA adapters under `module/peft=lora`); the `hf_export`
callback saves it in the same format at the end.
"""

import time
from functools import partial

import lightning as L
import torch

from r1lab.infra.hf import check_model_dir, load_model, load_tokenizer
from r1lab.infra.optim import lightning_optimizers
from r1lab.infra.peft import LoraConfig, apply_peft

Batch = dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]   # input_ids, attention_mask, labels [B, T]; or parts
Loss = tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]  # token mean, its number of tokens, terms to log


def token_weighted(parts: list[Loss]) -> Loss:
    """Token means of a batch's parts -> the token mean of the whole batch (each term likewise); a part without
    target tokens adds nothing.

    >>> loss, n, terms = token_weighted([(torch.tensor(1.0), torch.tensor(3), {"ce": torch.tensor(1.0)}),
    ...                                  (torch.tensor(5.0), torch.tensor(1), {"ce": torch.tensor(5.0)}),
    ...                                  (torch.tensor(float("nan")), torch.tensor(0), {"ce": torch.tensor(0.0)})])
    >>> loss.item(), n.item(), terms["ce"].item()
    (2.0, 4, 2.0)
    """
    if len(parts) == 1:
        return parts[0]
    counts = [k for _, k, _ in parts]
    n = sum(counts)

    def mean(values: list[torch.Tensor]) -> torch.Tensor:   # an empty part's NaN weighs 0, with no GPU sync
        return sum(torch.where(k > 0, v, 0.0) * k for v, k in zip(values, counts)) / n

    return mean([p[0] for p in parts]), n, {name: mean([p[2][name] for p in parts]) for name in parts[0][2]}


class SFTModule(L.LightningModule):
    def __init__(self, model_path: str, optimizer: partial, scheduler: partial | None = None, dtype: str = "float32",
                 gradient_checkpointing: bool = False, peft: LoraConfig | None = None):
        super().__init__()
        self.save_hyperparameters(logger=False)
        check_model_dir(model_path)  # a wrong path fails here, before any weights load
        self.model = None
        self.tokenizer = None
        self._last_step_time: float | None = None

    def configure_model(self) -> None:
        if self.model is not None:
            return
        self.model = apply_peft(load_model(self.hparams.model_path, self.hparams.dtype), self.hparams.peft)
        self.tokenizer = load_tokenizer(self.hparams.model_path)
        if self.hparams.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def _loss(self, batch: Batch) -> Loss:
        """Mean token cross-entropy, the number of target tokens it averages over, and named terms of the loss to log
        beside it. A batch in parts (each padded to its own longest row: data_modules/rejection.py) is the mean
        over all the parts' tokens."""
        parts = batch if isinstance(batch, list) else [batch]
        return token_weighted([self._part_loss(part) for part in parts])

    def _part_loss(self, part: dict[str, torch.Tensor]) -> Loss:
        """`_loss` of one padded tensor batch (`r1lab.stages.distill.DistillModule` adds its ce and kd terms)."""
        out = self.model(input_ids=part["input_ids"], attention_mask=part["attention_mask"], labels=part["labels"])
        return out.loss, (part["labels"][:, 1:] != -100).sum(), {}

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss, n_tokens, terms = self._loss(batch)
        now = time.perf_counter()
        if self._last_step_time is not None:  # tokens/s over the whole step: data, forward, backward, optimizer
            self.log("train/tokens_per_s", n_tokens / (now - self._last_step_time), on_step=True, on_epoch=False)
        self._last_step_time = now
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, on_step=True, on_epoch=False)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def on_train_epoch_start(self) -> None:
        self._last_step_time = None  # validation time is not training throughput

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        loss, n_tokens, terms = self._loss(batch)
        n_tokens = int(n_tokens)
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, on_epoch=True, batch_size=n_tokens, sync_dist=True)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=n_tokens, sync_dist=True)

    def configure_optimizers(self):
        return lightning_optimizers(self, self.hparams.optimizer, self.hparams.scheduler)
