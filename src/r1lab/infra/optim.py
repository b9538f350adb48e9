"""Learning-rate schedules, referenced from configs as `_partial_` targets and completed by the module with the step count."""

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine_factor(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak learning rate: linear warm-up, then cosine decay to `min_lr_ratio`.

    >>> [round(warmup_cosine_factor(s, 10, 2, 0.0), 3) for s in (0, 1, 2, 6, 10)]
    [0.5, 1.0, 1.0, 0.5, 0.0]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.1,
                  schedule_steps: int | None = None) -> LambdaLR:
    """Warm-up and cosine over the run's `total_steps`, or over `schedule_steps` when set: a run stopped before
    `schedule_steps` ends partway down the decay, like a checkpoint taken in the middle of pre-training."""
    steps = total_steps if schedule_steps is None else schedule_steps
    if steps < total_steps:
        raise ValueError(f"schedule_steps={schedule_steps} is shorter than the run ({total_steps} steps)")
    return LambdaLR(optimizer, lambda step: warmup_cosine_factor(step, steps, warmup_steps, min_lr_ratio))


def constant(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0) -> LambdaLR:
    """Linear warm-up, then the peak learning rate (R1's RL stages keep lr constant)."""
    return LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(1, warmup_steps)))


def lightning_optimizers(module, optimizer, scheduler=None) -> dict | Optimizer:
    """`configure_optimizers` of a module with `.model`: the `_partial_` optimizer over its trainable parameters and,
    if given, the `_partial_` schedule completed with the run's step count, stepped every optimiser step."""
    opt = optimizer(params=[p for p in module.model.parameters() if p.requires_grad])
    if scheduler is None:
        return opt
    schedule = scheduler(optimizer=opt, total_steps=module.trainer.estimated_stepping_batches)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
