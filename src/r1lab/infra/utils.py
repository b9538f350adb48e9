"""Small helpers for the Hydra entry points: the process set-up, the `stage` resolver, instantiating config groups,
logging the config, reading the returned metric."""

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import huggingface_hub.constants
import hydra
from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:   # r1lab.eval and r1lab.sample start without importing Lightning
    from lightning.pytorch.loggers import Logger

ROOT = Path(__file__).resolve().parents[3]


def init_process() -> None:
    """What an entry point does before Hydra composes its config: `${paths.root_dir}` resolves to this checkout
    (R1LAB_ROOT overrides it), nothing is downloaded from the Hub (HF_HUB_OFFLINE=0 allows it), and the `stage`
    resolver is registered. Called by `entry_point`, never at import."""
    os.environ.setdefault("R1LAB_ROOT", str(ROOT))
    if os.environ.setdefault("HF_HUB_OFFLINE", "1") == "1":
        huggingface_hub.constants.HF_HUB_OFFLINE = True   # read once when huggingface_hub was imported
    register_resolvers()


def stage_dir(name: str, *, _root_: DictConfig) -> str:
    """`${stage:cold_start}`: the directory of the run of `experiment=cold_start` in this run's `paths.runs_dir`.
    The one convention every launch shares (local runs, the pipeline, Slurm), so a stage names its upstream once."""
    return f"{_root_.paths.runs_dir}/{name}"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("stage"):
        OmegaConf.register_new_resolver("stage", stage_dir)


def entry_point(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """`@entry_point("train.yaml")`: a Hydra main over configs/<config_name> that runs `init_process()` first."""
    def wrap(task: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        @functools.wraps(task)
        def job(cfg: DictConfig) -> Any:   # a sweep's jobs (submitit) run this in a fresh process
            register_resolvers()
            return task(cfg)

        hydra_main = hydra.main(version_base="1.3", config_path=str(ROOT / "configs"), config_name=config_name)(job)

        @functools.wraps(task)
        def main() -> Any:
            init_process()
            return hydra_main()
        return main
    return wrap


def instantiate_each(group: DictConfig | None) -> list:
    """Instantiate every entry of a callbacks/logger group (a dict of `_target_` configs)."""
    return [hydra.utils.instantiate(c) for c in (group or {}).values() if c and "_target_" in c]


def log_config(cfg: DictConfig, loggers: list["Logger"]) -> None:
    """Record the resolved run config as the run's hyperparameters in every logger."""
    params = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
              for k, v in cfg.items() if k != "hydra"}
    for logger in loggers:
        logger.log_hyperparams(params)


def metric_value(metrics: dict, name: str | None, required: bool = True) -> float | None:
    """The value a sweep optimises. In a sweep (`required`) a named metric that was never logged is a config mistake;
    a single run that trained without validating it (no validation set, fewer steps than the interval) says so and
    returns None, so the run still ends with exit 0 (Slurm `afterok` chains and the pipeline go on)."""
    if not name:
        return None
    if not metrics:  # resumed from a checkpoint of a finished run: nothing ran, nothing to report
        print(f"optimized_metric={name!r}: no metric was logged (the run had nothing left to do)")
        return None
    if name not in metrics:
        if required:
            raise KeyError(f"optimized_metric={name!r} was not logged; logged metrics: {sorted(metrics)}")
        print(f"optimized_metric={name!r} was not logged (no validation ran); the run trained and exported its model")
        return None
    return float(metrics[name])

