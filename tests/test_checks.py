"""Config mistakes fail before anything loads, naming the setting to change (r1lab.infra.checks, run first by train()).

    pytest tests/test_checks.py
"""

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException

import r1lab.train
from r1lab.infra.checks import ConfigError, check_config
from r1lab.infra.utils import ROOT
from r1lab.train import train


@pytest.fixture
def nothing_loads(monkeypatch):
    """Fail the test if train() gets as far as instantiating anything (data, module, trainer)."""
    def refuse(*args, **kwargs):
        raise AssertionError("train() instantiated something before the config was checked")
    monkeypatch.setattr(r1lab.train.hydra.utils, "instantiate", refuse)


def test_every_experiment_passes(compose_train, experiment):
    check_config(compose_train(f"experiment={experiment}"))


def test_unknown_experiment_lists_the_known_ones():
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"), \
            pytest.raises(ConfigCompositionException) as err:
        compose("train", overrides=["experiment=r1_zer0"])
    message = str(err.value)
    assert "Could not find 'experiment/r1_zer0'" in message and "Available options" in message
    assert "r1_zero" in message


def _check(cfg) -> str:
    with pytest.raises(ConfigError) as err:
        train(cfg)
    return str(err.value)


def test_missing_model_dir_names_the_key_to_set(compose_train, tmp_path, nothing_loads):
    missing = tmp_path / "no_such_model"
    message = _check(compose_train("experiment=cold_start", f"model.path={missing}"))
    # module.model_path and data.tokenizer_path both say ${model.path}: one line, the key the user sets
    assert f"model.path={missing}: model directory {missing} does not exist" in message
    assert "Set model.path=<a Hugging Face model directory>" in message
    assert message.count(str(missing)) == 2


@pytest.mark.parametrize("key, experiment", [
    ("module.teacher_path", "distill_kd"),
    ("module.rewards.helpfulness.fn.model_path", "all_scenarios_rl"),
])
def test_every_model_directory_is_checked(compose_train, tmp_path, nothing_loads, key, experiment):
    from omegaconf import OmegaConf

    cfg = compose_train(f"experiment={experiment}")
    OmegaConf.update(cfg, key, str(tmp_path / "gone"))
    assert f"{key}={tmp_path / 'gone'}: model directory" in _check(cfg)


def test_a_directory_without_config_or_half_written_is_refused(compose_train, tmp_path, nothing_loads):
    empty = tmp_path / "empty"
    empty.mkdir()
    message = _check(compose_train("experiment=cold_start", f"model.path={empty}"))
    assert f"model.path={empty}: " in message and "config.json" in message
    half = tmp_path / "model"
    half.mkdir()
    (half / "config.json").write_text("{}")
    (tmp_path / "model.tmp").mkdir()
    assert "looks half-written" in _check(compose_train("experiment=cold_start", f"model.path={half}"))


@pytest.mark.parametrize("overrides, expected", [
    (["experiment=cold_start", "data.batch_size=0"], "data.batch_size=0: must be a positive integer"),
    (["experiment=r1_zero", "module.micro_batch_size=-4"], "module.micro_batch_size=-4: must be a positive integer"),
    (["experiment=r1_zero", "module.sampling.n=1"],
     "module.sampling.n=1: a group of one completion has no relative advantage"),
    (["experiment=all_scenarios_rl", "data.batch_size=1"], "data.batch_size=1: mixing by data.ratio needs 2 rows"),
    (["experiment=rejection_sft", "data.batch_size=1"], "data.batch_size=1: mixing by data.ratio needs 2 rows"),
    (["experiment=cold_start", "trainer.accumulate_grad_batches=0"],
     "trainer.accumulate_grad_batches=0: must be a positive integer"),
    (["experiment=r1_zero", "trainer.gradient_clip_val=1.0"],
     "trainer.gradient_clip_val=1.0: this module optimises manually and clips its own gradients"),
    (["experiment=r1_zero", "trainer.accumulate_grad_batches=4"],
     "trainer.accumulate_grad_batches=4: this module optimises manually"),
])
def test_inconsistent_sizes_name_the_key(compose_train, nothing_loads, overrides, expected):
    assert expected in _check(compose_train(*overrides))


def test_every_problem_is_listed_at_once(compose_train, tmp_path, nothing_loads):
    message = _check(compose_train("experiment=r1_zero", f"model.path={tmp_path / 'x'}", "module.sampling.n=1",
                                   "trainer.gradient_clip_val=0.5"))
    assert len(re.findall(r"^  - ", message, flags=re.MULTILINE)) == 3, message


def test_sft_accumulation_is_fine(compose_train):
    check_config(compose_train("experiment=cold_start", "trainer.accumulate_grad_batches=4"))
    assert Path(compose_train("experiment=cold_start").model.path).is_dir()
