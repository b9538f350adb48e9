"""Shared fixtures: one small demo world and a ~1M-parameter model built offline once per test session,
and `compose_train`, which composes the real `configs/train.yaml` pointed at them."""

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from r1lab.utils import ROOT, set_root

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
set_root()

SMALL_WORLD = {"n_reasoning_train": 400, "n_reasoning_val": 16, "n_reasoning_test": 16, "n_general_train": 120,
               "n_general_val": 10, "n_general_test": 10, "n_facts": 40, "n_cold_start": 120, "n_cold_start_val": 16,
               "n_pretrain_val": 20}


@pytest.fixture(scope="session")
def artifacts_dir(tmp_path_factory) -> Path:
    from r1lab.build import build_all

    root = tmp_path_factory.mktemp("artifacts")
    build_all(root / "world", root / "models", seed=0, sizes=["tiny"], world_sizes=SMALL_WORLD, vocab_size=1024)
    return root


@pytest.fixture(scope="session")
def world_dir(artifacts_dir) -> Path:
    return artifacts_dir / "world"


@pytest.fixture(scope="session")
def tokenizer_dir(artifacts_dir) -> Path:
    """The tiny model's directory: its tokenizer and its random-init weights."""
    return artifacts_dir / "models" / "tiny"


@pytest.fixture
def compose_train(artifacts_dir, tmp_path):
    """Compose configs/train.yaml with `overrides`, on the tiny model and small world, writing under tmp_path."""

    def _compose(*overrides: str, config_name: str = "train"):
        GlobalHydra.instance().clear()
        with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
            defaults = ["model=tiny"] if config_name == "train" else []
            cfg = compose(config_name, overrides=[*defaults, *overrides], return_hydra_config=True)
        with open_dict(cfg):
            cfg.paths.artifacts_dir = str(artifacts_dir)
            cfg.paths.world_dir = str(artifacts_dir / "world")
            cfg.paths.models_dir = str(artifacts_dir / "models")
            cfg.paths.log_dir = str(tmp_path / "logs")
            cfg.paths.aim_dir = str(tmp_path)
            cfg.paths.output_dir = str(tmp_path / "run")
            if "model" in cfg and "model.path" not in " ".join(overrides):
                cfg.model.path = str(artifacts_dir / "models" / "tiny")
            cfg.hydra.runtime.output_dir = str(tmp_path / "run")
        return cfg

    return _compose
