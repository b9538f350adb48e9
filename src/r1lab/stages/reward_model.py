"""Reward models (R1 stage 4): a causal LM with a scalar head trained on preferences, and the reward that scores
completions with one during the all-scenario RL.

`RewardModelModule` loads `AutoModelForSequenceClassification` (num_labels=1) from a causal-LM directory in
`configure_model()`: the backbone is the LM's, the linear head new, the score read at the last non-pad token. The loss
is a config choice (`module.loss`): `bradley_terry_loss` on preference pairs (helpfulness) or `pointwise_loss` on
responses labelled safe or unsafe (harmlessness). Each loss also returns the binary decisions it trains, scored as
val/accuracy (for pairs: the share of pairs ranked right); val/auc ranks every good response against every bad one.
The `hf_export` callback saves model and tokenizer, the directory `reward_model_reward` loads.
Run: `python -m r1lab.train experiment=reward_model_helpfulness` (or `reward_model_harmlessness`).

Simplified: the whole backbone is fine-tuned (or LoRA adapters and the head, `module/peft=lora`); one score per response (no per-token or multi-objective heads); the
reward is sigmoid(score), so a Bradley-Terry model's reward is bounded but only its order means anything.
"""

from collections.abc import Callable
from functools import partial

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC

from r1lab.infra.hf import check_model_dir, load_tokenizer
from r1lab.infra.optim import lightning_optimizers
from r1lab.infra.peft import LoraConfig, apply_peft
from r1lab.maths.reward_models import load_reward_model


def bradley_terry_loss(scores: torch.Tensor, labels: torch.Tensor):
    """-log sigmoid(r_chosen - r_rejected), averaged over pairs. `scores` [2B] are the chosen responses' (label 1)
    then the rejected ones' (label 0) in the same order. Also returns the decisions it trains: the margins [B], as
    logits whose target is 1 (a pair is ranked right when its margin is > 0).

    >>> loss, logits, targets = bradley_terry_loss(torch.tensor([2.0, 0.0, 1.0, 0.5]), torch.tensor([1, 1, 0, 0]))
    >>> round(loss.item(), 4), logits.tolist(), targets.tolist()
    (0.6437, [1.0, -0.5], [1.0, 1.0])
    """
    chosen, rejected = scores[labels == 1], scores[labels == 0]                       # [B], [B]
    if chosen.shape != rejected.shape:
        raise ValueError(f"bradley_terry_loss needs pairs: {len(chosen)} chosen and {len(rejected)} rejected scores")
    margins = chosen - rejected                                                        # [B]
    return -F.logsigmoid(margins).mean(), margins, torch.ones_like(margins)


def pointwise_loss(scores: torch.Tensor, labels: torch.Tensor):
    """Binary cross-entropy of sigmoid(score) against the label (1 good or safe, 0 bad or unsafe); the decisions are
    the scores [N] as logits, the labels their targets.

    >>> loss, logits, targets = pointwise_loss(torch.tensor([0.0, 2.0]), torch.tensor([1, 0]))
    >>> round(loss.item(), 4), targets.tolist()
    (1.41, [1.0, 0.0])
    """
    labels = labels.float()
    return F.binary_cross_entropy_with_logits(scores, labels), scores, labels


class RewardModelModule(L.LightningModule):
    def __init__(self, model_path: str, optimizer: partial, loss: Callable, scheduler: partial | None = None,
                 dtype: str = "float32", gradient_checkpointing: bool = False, peft: LoraConfig | None = None):
        super().__init__()
        self.save_hyperparameters(logger=False)
        check_model_dir(model_path)  # a wrong path fails here, before any weights load
        self.model = self.tokenizer = None
        self.val_accuracy, self.val_auc = BinaryAccuracy(), BinaryAUROC()

    def configure_model(self) -> None:
        if self.model is not None:
            return
        self.tokenizer = load_tokenizer(self.hparams.model_path)
        model = load_reward_model(self.hparams.model_path, self.hparams.dtype, self.tokenizer.pad_token_id).train()
        self.model = apply_peft(model, self.hparams.peft, modules_to_save=("score",))  # the new head trains whole
        if self.hparams.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def _scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, logits, targets = self.hparams.loss(self._scores(batch), batch["labels"])
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/accuracy", ((logits > 0).float() == targets).float().mean(), on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        scores = self._scores(batch)                                                   # [N]
        loss, logits, targets = self.hparams.loss(scores, batch["labels"])
        self.val_accuracy.update(torch.sigmoid(logits), targets.long())
        self.val_auc.update(torch.sigmoid(scores), (batch["labels"] > 0.5).long())
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=len(logits), sync_dist=True)
        self.log("val/accuracy", self.val_accuracy, on_epoch=True, prog_bar=True)
        self.log("val/auc", self.val_auc, on_epoch=True)

    def configure_optimizers(self):
        return lightning_optimizers(self, self.hparams.optimizer, self.hparams.scheduler)


