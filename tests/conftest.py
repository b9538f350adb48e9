"""Shared fixtures: one small demo world and a ~1M-parameter model built offline once per test session, a small
rejection-sampled set, a distillation teacher, stand-in reward models, and `compose_train`, which composes the real
`configs/train.yaml` pointed at them."""

import os
import signal
import time
from functools import partial
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict

from r1lab.infra.utils import ROOT, init_process

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
init_process()

def train_experiments() -> list[str]:
    """Every experiment file `r1lab.train` runs: all but those the demo pipeline gives another entry point."""
    other = {stage for stage, run in OmegaConf.load(ROOT / "configs" / "pipeline" / "demo.yaml").stages.items()
             if run != "train"}
    return sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml") if p.stem not in other)


def pytest_generate_tests(metafunc):
    """A test taking `experiment` runs once per training experiment."""
    if "experiment" in metafunc.fixturenames and not any(m.name == "parametrize" for m in metafunc.definition.iter_markers()):
        metafunc.parametrize("experiment", train_experiments())


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


class ScriptedRollout:
    """A rollout engine that answers each chat prompt with `scripted_samples(row)`: one sample per filter outcome."""

    def __init__(self, model, tokenizer, rows: list[dict]):
        from r1lab.maths.formats import render_chat
        self.rows = {render_chat(row["prompt"], tokenizer): row for row in rows}

    def generate(self, prompts: list[str], sampling, done=None) -> list[list]:
        from r1lab.rollout.engine import Completion
        return [[Completion(text, [1], True) for text in scripted_samples(self.rows[p])[:sampling.n]] for p in prompts]


def scripted_samples(row: dict) -> list[str]:
    """Nine responses to a world reasoning row; under configs/sample.yaml's filters with m=1 they come out as:
    accepted, duplicate, near_duplicate, broken_format, wrong_answer, mixed_language, long_paragraph, code_block,
    over_cap."""
    from r1lab.demo.world import completion_answer
    from r1lab.maths.formats import cold_start_response

    summary, cot = f"The answer is \\boxed{{{completion_answer(row)}}}.", f"Let me work through this. {row['solution']}"
    good = cold_start_response(cot, summary)
    return [good, good, cold_start_response(cot.replace(" ", "  "), summary), good.replace("</summary>", ""),
            cold_start_response(cot, "The answer is \\boxed{-1}."), cold_start_response(cot + " 所以 done.", summary),
            cold_start_response(cot + "\n\n" + "x" * 1200, summary),
            cold_start_response(cot + " ```python\nprint(1)\n```", summary),
            cold_start_response(f"{row['solution']} Done, checked twice.", summary)]


def compose_sample(*overrides: str):
    """configs/sample.yaml with `overrides` (without Hydra's runtime: set output_dir)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return compose("sample", overrides=list(overrides))


@pytest.fixture(scope="session")
def samples_dir(artifacts_dir) -> Path:
    """A finished `r1lab.sample` run where `${stage:rejection_sampling}` points (<runs_dir>/rejection_sampling): 12 world
    prompts x the 9 scripted samples in shards of 5 prompts, so each outcome is counted 12 times."""
    from r1lab.data.io import read_rows
    from r1lab.sample import run

    out = artifacts_dir / "runs" / "rejection_sampling"
    cfg = compose_sample(f"model_dir={artifacts_dir / 'models' / 'tiny'}", f"paths.world_dir={artifacts_dir / 'world'}",
                         f"output_dir={out}", "limit=12", "k=9", "m=1", "shard_size=5")
    rows = read_rows(artifacts_dir / "world" / "reasoning" / "train.jsonl", {"prompt": str})
    run(cfg, rollout_factory=partial(ScriptedRollout, rows=rows))
    return out


@pytest.fixture(scope="session")
def teacher_dir(artifacts_dir) -> Path:
    """A stand-in for the stage-3 model where experiment=distill_kd reads its teacher (`${stage:rejection_sft}/model`):
    the tiny model, other weights."""
    from transformers import AutoTokenizer

    from r1lab.demo.models import build_model
    from r1lab.infra.hf import save_pretrained_atomic

    tokenizer = AutoTokenizer.from_pretrained(artifacts_dir / "models" / "tokenizer")
    return save_pretrained_atomic(build_model(tokenizer, "tiny", seed=1), tokenizer,
                                  artifacts_dir / "runs" / "rejection_sft" / "model")


@pytest.fixture(scope="session")
def reward_model_dirs(artifacts_dir) -> dict[str, Path]:
    """Stand-ins where experiment=all_scenarios_rl reads its reward models (`${stage:reward_model_<name>}/model`): the
    tiny model with a new scalar head."""
    from r1lab.infra.hf import load_tokenizer, save_pretrained_atomic
    from r1lab.maths.reward_models import load_reward_model

    tiny = artifacts_dir / "models" / "tiny"
    tokenizer = load_tokenizer(tiny)
    return {name: save_pretrained_atomic(load_reward_model(str(tiny), pad_token_id=tokenizer.pad_token_id), tokenizer,
                                         artifacts_dir / "runs" / f"reward_model_{name}" / "model")
            for name in ("helpfulness", "harmlessness")}


@pytest.fixture
def compose_train(artifacts_dir, samples_dir, teacher_dir, reward_model_dirs, tmp_path):
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
            cfg.paths.runs_dir = str(artifacts_dir / "runs")
            cfg.paths.log_dir = str(tmp_path / "logs")
            cfg.paths.aim_dir = str(tmp_path)
            cfg.paths.output_dir = str(tmp_path / "run")
            if "model" in cfg and "model.path" not in " ".join(overrides):
                cfg.model.path = str(artifacts_dir / "models" / "tiny")
            if "rollout" in cfg and not any(o.startswith("rollout") for o in overrides):
                # vLLM 0.32 fails to start an engine in a process where an earlier one shut down ("pipeline model
                # parallel group is not initialized"), so these tests sample with transformers; GRPO on vLLM is
                # tested in test_rollout_vllm.py
                cfg.rollout = OmegaConf.load(ROOT / "configs" / "rollout" / "hf.yaml")
            cfg.hydra.runtime.output_dir = str(tmp_path / "run")
        return cfg

    return _compose


def sigkill_when(proc, ready: Path, timeout_s: float, delay_s: float = 0.0) -> None:
    """SIGKILL the subprocess `proc` (started with stderr=PIPE) once the file `ready` exists, `delay_s` later; fails
    if the process ends first or `ready` does not appear within `timeout_s`."""
    deadline = time.time() + timeout_s
    try:
        while not ready.exists():
            assert proc.poll() is None, f"the process ended before {ready} existed: {proc.stderr.read().decode()[-3000:]}"
            assert time.time() < deadline, f"no {ready} after {timeout_s} s"
            time.sleep(0.01)
        time.sleep(delay_s)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture
def sigkill():
    """`sigkill(proc, ready_file, timeout_s, delay_s=0)`: see sigkill_when."""
    return sigkill_when
