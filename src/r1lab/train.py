"""Train any stage: `python -m r1lab.train experiment=<name> [overrides]` (installed as `r1lab-train`).

Composes the data module, the stage's LightningModule, callbacks, loggers and trainer from the config, fits,
and returns `optimized_metric` so that `-m hparams_search=...` sweeps need no code. It never branches on the stage:
the experiment config decides what runs.
"""

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from omegaconf import DictConfig

from r1lab.infra.atomic import remove_stale_tmp
from r1lab.infra.checks import check_config
from r1lab.infra.utils import entry_point, instantiate_each, log_config, metric_value


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured module on the configured data; returns the trainer's final callback metrics."""
    check_config(cfg)  # config mistakes (DeepSpeed's included) fail here, before any data or model loads
    if rank_zero_only.rank == 0:
        for stale in remove_stale_tmp(cfg.paths.output_dir):
            rank_zero_info(f"Removed {stale}, left by a killed run")
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    module = hydra.utils.instantiate(cfg.module)
    callbacks = instantiate_each(cfg.get("callbacks"))
    loggers = instantiate_each(cfg.get("logger"))
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    log_config(cfg, loggers)
    # weights_only=False: our own checkpoints keep the module's hyperparameters, Hydra partials included
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=False)
    return {name: float(value) for name, value in trainer.callback_metrics.items()}


@entry_point("train.yaml")
def main(cfg: DictConfig) -> float | None:
    sweep = HydraConfig.get().mode == RunMode.MULTIRUN   # a sweep needs the metric of every trial
    return metric_value(train(cfg), cfg.get("optimized_metric"), required=sweep)


if __name__ == "__main__":
    main()
