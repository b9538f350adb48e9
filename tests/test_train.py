"""The entry point and the configs: every config composes and instantiates, every experiment runs as a fast dev run
on the tiny model, SFT learns, the stage's Hugging Face export reloads, and Aim records what the run logged."""

import csv
from pathlib import Path

import hydra
import pytest
import torch
from hydra.errors import InstantiationException
from omegaconf import OmegaConf

from r1lab.infra.utils import ROOT, instantiate_each, metric_value
from r1lab.train import train

GROUP_OPTIONS = [(group, p.stem) for group in ("trainer", "loop", "logger", "callbacks", "data", "model", "module", "template")
                 for p in sorted((ROOT / "configs" / group).glob("*.yaml"))]


@pytest.mark.parametrize("group, option", GROUP_OPTIONS)
def test_every_group_option_composes(compose_train, group, option):
    cfg = compose_train(f"{group}={option}")
    node = cfg.trainer if group == "loop" else cfg.get(group)   # loop/ sets trainer keys (`# @package trainer`)
    if group not in ("module", "data"):
        OmegaConf.resolve(node)
    assert node is not None or option == "none"
    if group == "loop":
        assert cfg.trainer.max_epochs == -1 and cfg.trainer.check_val_every_n_epoch is None


def test_every_experiment_instantiates(compose_train, experiment):
    cfg = compose_train(f"experiment={experiment}")
    assert hydra.utils.instantiate(cfg.data) is not None
    assert hydra.utils.instantiate(cfg.module) is not None
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=instantiate_each(cfg.callbacks), logger=False)
    assert trainer.max_steps == cfg.trainer.max_steps


def test_every_experiment_runs_fast_dev_run(compose_train, experiment, tmp_path):
    cfg = compose_train(f"experiment={experiment}", "debug=fdr")
    metrics = train(cfg)
    assert metrics and all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert (tmp_path / "run" / "model" / "config.json").is_file()   # the stage's artifact


def test_hparams_search_composes(compose_train):
    cfg = compose_train("experiment=cold_start", "hparams_search=sft_optuna")
    assert cfg.hydra.sweeper.params["module.optimizer.lr"].startswith("interval")
    assert cfg.optimized_metric == "val/loss"


def read_csv_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_sft_lowers_loss_and_exports_a_loadable_model(compose_train, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = compose_train("experiment=cold_start", "logger=csv", "trainer.max_steps=40", "trainer.val_check_interval=20",
                        "trainer.log_every_n_steps=1", "data.batch_size=8", "module.optimizer.lr=3e-3",
                        "callbacks.model_checkpoint.every_n_train_steps=20")
    metrics = train(cfg)
    rows = read_csv_metrics(tmp_path / "run")
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert len(losses) == 40 and sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    assert len(val) == 2 and val[1] < val[0]
    assert any(r.get("train/tokens_per_s") for r in rows)
    assert metric_value(metrics, "val/loss") == pytest.approx(val[-1], rel=1e-5)
    export = tmp_path / "run" / "model"
    model = AutoModelForCausalLM.from_pretrained(export)
    tokenizer = AutoTokenizer.from_pretrained(export)
    assert model.num_parameters() > 0 and tokenizer.eos_token == "<|im_end|>"
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_missing_optimized_metric_is_an_error():
    with pytest.raises(KeyError, match="was not logged"):
        metric_value({"val/loss": 1.0}, "val/acc")


def test_a_single_run_without_its_validation_metric_ends_cleanly(artifacts_dir, tmp_path):
    """A run that trained and exported exits 0 even when no validation ran (here: no validation batches)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "r1lab.train", "experiment=cold_start", "model=tiny",
                           f"model.path={artifacts_dir}/models/tiny", f"paths.world_dir={artifacts_dir}/world",
                           f"paths.runs_dir={tmp_path}", "logger=csv", "trainer.max_steps=2",
                           "trainer.limit_val_batches=0", "data.batch_size=2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "optimized_metric='val/loss' was not logged (no validation ran)" in done.stdout
    assert (tmp_path / "cold_start" / "model" / "config.json").is_file()


def test_missing_model_dir_fails_before_loading(compose_train, tmp_path):
    cfg = compose_train("experiment=cold_start", f"model.path={tmp_path / 'nope'}")
    with pytest.raises(InstantiationException, match=r"(?s)FileNotFoundError.*nope does not exist.*model\.path"):
        hydra.utils.instantiate(cfg.module)


def test_aim_records_metrics_and_hparams(compose_train, tmp_path):
    from aim import Repo
    from aim.sdk.index_manager import RepoIndexManager

    cfg = compose_train("experiment=cold_start", "logger=aim", "trainer.max_steps=6", "trainer.log_every_n_steps=1",
                        "trainer.val_check_interval=6", "data.batch_size=4")
    train(cfg)
    repo = Repo(str(tmp_path))
    index = RepoIndexManager.get_index_manager(repo)
    for run_hash in repo.list_all_runs():
        index.index(run_hash)
    runs = list(Repo(str(tmp_path)).iter_runs())
    assert len(runs) == 1
    run = runs[0]
    assert run["hparams"]["module"]["optimizer"]["lr"] == cfg.module.optimizer.lr
    found = {(m.name, m.context.to_dict().get("subset")): m.values.values_list() for m in run.metrics()}
    assert len(found[("loss", "train")]) == 6
    assert len(found[("loss", "val")]) == 1


@pytest.mark.parametrize("template", sorted(p.stem for p in (ROOT / "configs" / "template").glob("*.yaml")))
def test_eval_config_composes_with_every_template(compose_train, template, tokenizer_dir):
    cfg = compose_train(f"template={template}", f"model_dir={tokenizer_dir}", config_name="eval")
    built = hydra.utils.instantiate(cfg.template)
    assert callable(built.render) and callable(built.extract) and callable(built.format_reward)
    assert hydra.utils.instantiate(cfg.sampling).temperature == 0.6



def test_optuna_sweep_runs_through_the_installed_script(artifacts_dir, tmp_path):
    """`r1lab-train -m hparams_search=...` needs no code: main() returns the metric the sweeper optimises."""
    import shutil
    import subprocess
    import sys

    script = shutil.which("r1lab-train", path=str(Path(sys.executable).parent))
    assert script, "the r1lab-train console script is not installed"
    overrides = ["experiment=cold_start", "hparams_search=sft_optuna", "hydra.sweeper.n_trials=2",
                 "hydra.sweeper.sampler.n_startup_trials=2", "model=tiny", f"model.path={artifacts_dir}/models/tiny",
                 f"paths.world_dir={artifacts_dir}/world", f"paths.log_dir={tmp_path}", "logger=csv",
                 "trainer.max_steps=3", "trainer.val_check_interval=3", "trainer.limit_val_batches=2",
                 "callbacks=none"]
    done = subprocess.run([script, *overrides], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = list(tmp_path.glob("cold_start/multiruns/*/optimization_results.yaml"))
    assert len(results) == 1
    best = OmegaConf.load(results[0])
    assert best.best_value > 0 and "module.optimizer.lr" in best.best_params
