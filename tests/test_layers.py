"""The tree's layers, enforced: imports only point down, entry points are leaves, no cycles, no import-time side effects.

    infra < data < maths < rollout < stages        the library, bottom to top; `demo` sits on maths
    data_modules                                   the LightningDataModules, on the library's data, infra and formats
    train eval sample pipeline build convert report  the entry points: nothing imports them
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from r1lab.infra.utils import ROOT

LAYERS = {"infra": 0, "data": 1, "maths": 2, "demo": 3, "rollout": 3, "stages": 4}
ENTRY_POINTS = {"train", "eval", "sample", "pipeline", "build", "convert", "report"}
DATA_MODULES_MAY_USE = {"r1lab.infra", "r1lab.data", "r1lab.maths.formats"}


def modules() -> dict[str, Path]:
    """Every module of the two packages, by dotted name."""
    files = {f"r1lab.{p.relative_to(ROOT / 'src' / 'r1lab').with_suffix('').as_posix().replace('/', '.')}": p
             for p in (ROOT / "src" / "r1lab").rglob("*.py")}
    files |= {f"data_modules.{p.stem}": p for p in (ROOT / "data_modules").glob("*.py")}
    return {name.removesuffix(".__init__"): path for name, path in files.items()}


def imports(path: Path) -> set[str]:
    """The r1lab and data_modules modules a file imports, anywhere in it (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    known = modules()
    return {name for name in found if name in known and name.split(".")[0] in ("r1lab", "data_modules")}


def layer(module: str) -> str | None:
    """`r1lab.maths.rl` and `r1lab.maths` -> "maths"; an entry point -> None."""
    parts = module.split(".")
    return parts[1] if parts[0] == "r1lab" and len(parts) > 1 and parts[1] in LAYERS else None


GRAPH = {name: imports(path) - {name} for name, path in modules().items()}


def test_the_tree_is_at_most_two_deep_and_every_module_has_a_layer():
    for name in GRAPH:
        parts = name.split(".")
        assert len(parts) <= 3, name
        if parts[0] == "r1lab" and len(parts) == 2:
            assert parts[1] in ENTRY_POINTS | set(LAYERS), f"{name}: a module at the top must be an entry point"


def test_entry_points_are_leaves():
    for name, deps in GRAPH.items():
        assert not {d for d in deps if d.removeprefix("r1lab.") in ENTRY_POINTS}, f"{name} imports an entry point"


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if layer(n)))
def test_the_library_imports_only_its_own_layer_or_below(name):
    for dep in GRAPH[name]:
        assert not dep.startswith("data_modules"), f"{name} imports {dep}: the library never imports data_modules"
        assert layer(dep) and LAYERS[layer(dep)] <= LAYERS[layer(name)], \
            f"{name} ({layer(name)}) imports {dep}, a layer above it"
        if layer(name) == "demo":
            assert layer(dep) != "rollout", f"{name} imports {dep}"


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if n.startswith("data_modules")))
def test_data_modules_use_only_the_data_layer(name):
    for dep in (d for d in GRAPH[name] if d.startswith("r1lab")):
        assert any(dep == allowed or dep.startswith(allowed + ".") for allowed in DATA_MODULES_MAY_USE), \
            f"{name} imports {dep}; data_modules may use {sorted(DATA_MODULES_MAY_USE)}"


def test_no_import_cycles():
    def visit(name, path):
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(name):], name]))
        for dep in GRAPH.get(name, ()):
            if dep not in done:
                visit(dep, [*path, name])
        done.add(name)

    done: set[str] = set()
    for name in GRAPH:
        visit(name, [])


def test_importing_r1lab_changes_nothing_in_the_process():
    """A notebook importing r1lab keeps its Hugging Face Hub access and its environment."""
    code = ("import os; before = dict(os.environ)\n"
            f"import {', '.join(sorted(n for n in GRAPH if n.startswith('r1lab')))}\n"
            "import huggingface_hub.constants as c\n"
            "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())\n"
            "assert not c.HF_HUB_OFFLINE\n")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "R1LAB_ROOT")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_evaluation_and_sampling_start_without_lightning():
    """r1lab.eval and r1lab.sample run in a process of their own per model (nine in the demo): Lightning, which only
    training uses, would add seconds to each start."""
    code = ("import sys, r1lab.eval, r1lab.sample, r1lab.pipeline\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'lightning'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]", result.stdout[:500]
