"""The stage modules against their YAML and the size rule: each `configs/module/*.yaml` restates its constructor's
defaults exactly, its components (`_target_`) compose, and no function of `src/r1lab/stages/` runs over MAX_LINES
lines."""

import ast
import inspect

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_object, instantiate
from omegaconf import OmegaConf

from r1lab.infra.utils import ROOT

MAX_LINES = 40
MODULES = sorted(p.stem for p in (ROOT / "configs" / "module").glob("*.yaml"))


def module_node(name: str) -> dict:
    """configs/train.yaml's `module` with `module=<name>`, interpolations left as written."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[f"module={name}"])
    return OmegaConf.to_container(cfg.module, resolve=False)


def drift(node: dict, params: dict[str, inspect.Parameter]) -> dict[str, tuple]:
    """key -> (YAML value, constructor default) wherever both give a value and they differ. An interpolation is
    another group's value and is skipped; a `_target_` node is compared with a callable default by dotted name."""
    out = {}
    for key, value in node.items():
        default = params[key].default
        if default is inspect.Parameter.empty or (isinstance(value, str) and "${" in value):
            continue
        if isinstance(value, dict):
            if "_target_" in value and callable(default):
                name = f"{default.__module__}.{default.__qualname__}"
                if value["_target_"] != name:
                    out[key] = (value["_target_"], name)
            continue
        if value != default:
            out[key] = (value, default)
    return out


@pytest.mark.parametrize("name", MODULES)
def test_module_yaml_and_constructor_defaults_agree(name):
    node = module_node(name)
    params = inspect.signature(get_object(node.pop("_target_")).__init__).parameters
    assert not set(node) - set(params), f"module={name}: keys its constructor does not take"
    assert not drift(node, params), f"module={name}: the YAML and the constructor's defaults differ"


def test_drift_is_seen():
    def f(a, b=1, c=2.0, loss=inspect.signature):
        ...
    params = inspect.signature(f).parameters
    node = {"a": 5, "b": 1, "c": 3.0, "loss": {"_target_": "inspect.signature", "_partial_": True}}
    assert drift(node, params) == {"c": (3.0, 2.0)}
    assert drift({"loss": {"_target_": "inspect.getsource"}}, params) == {"loss": ("inspect.getsource",
                                                                                   "inspect.signature")}


def test_dr_grpo_weights_take_the_sampling_budget():
    """`loss_weights` is a component: Dr. GRPO's constant denominator is the configured generation budget."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["module=grpo", "module.sampling.max_new_tokens=4",
                                          "module/loss_weights=constant_length"])
    weights = instantiate(cfg.module.loss_weights)(torch.tensor([[1, 1, 0], [1, 0, 0]]))
    assert weights.tolist() == [[0.125, 0.125, 0.0], [0.125, 0.0, 0.0]]   # 1 / (N = 2 x 4 tokens)


def test_stage_functions_stay_short():
    """Stage modules orchestrate: a function longer than MAX_LINES (docstring included) should be split."""
    long = []
    for path in sorted((ROOT / "src" / "r1lab" / "stages").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{path.name}:{node.lineno} {node.name}: {lines} lines")
    assert not long, f"split these (at most {MAX_LINES} lines each): {long}"
