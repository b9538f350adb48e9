"""Numeric guards: an optimiser step whose loss or gradient is not finite is skipped and counted; several in a row
stop the run.
Weights are guarded too: `r1lab.infra.hf.first_nonfinite` names the first tensor holding a NaN or infinity, so model
loading refuses such weights before training and no export writes them.

`NonFiniteGuard` is a callback, so SFT (automatic optimisation) and GRPO (manual, `_optimise`) share it: Lightning
calls `on_before_backward` with every loss that is backpropagated and `on_before_optimizer_step` before every
optimiser step in both modes. A bad step's gradients are dropped (`p.grad = None`), which makes the optimiser leave
the weights and its own state (moments, step counts) untouched; the learning-rate schedule still advances.
`train/skipped_nonfinite` logs the run's count. After `max_consecutive` skipped steps in a row the run stops with
`NonFiniteError`: no checkpoint or export is written after the error, so the last checkpoint (which holds only
finite weights, since bad steps never reach them) is intact.
"""

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn


class NonFiniteError(RuntimeError):
    pass


def grads_finite(parameters) -> bool:
    """True when every gradient present is finite.

    >>> p = torch.nn.Parameter(torch.ones(2)); p.grad = torch.tensor([1.0, float("nan")])
    >>> grads_finite([p]), grads_finite([torch.nn.Parameter(torch.ones(1))])
    (False, True)
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return True
    return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


class NonFiniteGuard(L.Callback):
    def __init__(self, max_consecutive: int = 3):
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.skipped = 0          # optimiser steps skipped in this run (resumed runs continue the count)
        self.consecutive = 0
        self._bad_loss = False

    @property
    def state_key(self) -> str:
        return "NonFiniteGuard"

    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped, self.consecutive = state_dict["skipped"], state_dict["consecutive"]

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss.detach()).all():
            self._bad_loss = True

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        bad = self._bad_loss or not grads_finite(params)
        self._bad_loss = False
        bad = trainer.strategy.reduce_boolean_decision(bad, all=False)  # one rank's NaN skips the step on every rank
        if not bad:
            self.consecutive = 0
            return
        for p in params:
            p.grad = None
        self.skipped += 1
        self.consecutive += 1
        rank_zero_warn(f"step {trainer.global_step}: non-finite loss or gradient, optimiser step skipped "
                       f"({self.consecutive} in a row, {self.skipped} in this run)")
        if self.consecutive >= self.max_consecutive:
            ckpt = getattr(trainer.checkpoint_callback, "last_model_path", "") or "none written yet"
            raise NonFiniteError(
                f"{self.consecutive} optimiser steps in a row had a non-finite loss or gradient (the last at step "
                f"{trainer.global_step}); stopping. None of them changed the weights; the last checkpoint ({ckpt}) "
                "is intact. Lower the learning rate, check the data of these steps, or raise "
                "callbacks.nonfinite_guard.max_consecutive.")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        pl_module.log("train/skipped_nonfinite", float(self.skipped), on_step=True, on_epoch=False)
