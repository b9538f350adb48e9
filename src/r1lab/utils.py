"""Small helpers for the Hydra entry points: instantiating config groups, logging the config, reading the returned metric."""

import os
from pathlib import Path

import hydra
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

ROOT = Path(__file__).resolve().parents[2]


def set_root() -> None:
    """Let configs resolve `${paths.root_dir}` to this checkout (overridable with the R1LAB_ROOT variable)."""
    os.environ.setdefault("R1LAB_ROOT", str(ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # stages load from local paths; nothing is downloaded at run time


def instantiate_each(group: DictConfig | None) -> list:
    """Instantiate every entry of a callbacks/logger group (a dict of `_target_` configs)."""
    return [hydra.utils.instantiate(c) for c in (group or {}).values() if c and "_target_" in c]


def log_config(cfg: DictConfig, loggers: list[Logger]) -> None:
    """Record the resolved run config as the run's hyperparameters in every logger."""
    params = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
              for k, v in cfg.items() if k != "hydra"}
    for logger in loggers:
        logger.log_hyperparams(params)


def metric_value(metrics: dict, name: str | None) -> float | None:
    """The value a sweep optimises; a named metric that was never logged is a config mistake, not a silent None."""
    if not name:
        return None
    if not metrics:  # resumed from a checkpoint of a finished run: nothing ran, nothing to report
        print(f"optimized_metric={name!r}: no metric was logged (the run had nothing left to do)")
        return None
    if name not in metrics:
        raise KeyError(f"optimized_metric={name!r} was not logged; logged metrics: {sorted(metrics)}")
    return float(metrics[name])

