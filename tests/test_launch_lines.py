"""Every training command line the README and slurm/*.sh show does what it says: each is composed with Hydra (an
`sbatch slurm/...` line as the overrides slurm/run.sbatch really passes to `srun python -m r1lab.train`, found by
running the script with stand-ins for srun and scontrol) and its strategy, nodes, devices and requeue callback are
checked against the trainer it names and the Slurm job it would get. Every `model=X` they name is a config file.

    pytest tests/test_launch_lines.py
"""

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_class
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, StrategyRegistry
from omegaconf import OmegaConf

from r1lab.infra.checks import precision_problems
from r1lab.infra.utils import ROOT

README = ROOT / "README.md"
SCRIPTS = sorted({p.resolve() for p in (ROOT / "slurm").glob("*.sh")} | {(ROOT / "slurm" / "run.sbatch").resolve()})
PLACEHOLDER = re.compile(r"<[^>]*>|\.\.\.")   # `<run dir>`, `...`: not a line that runs as written
OPTIONAL = re.compile(r"(?<=\s)\[[^\]\[=]*\]")  # `[hydra overrides]`: an optional part, left out
SLURM_JOB = {"SLURM_NNODES": "3", "SLURM_NTASKS_PER_NODE": "5"}   # what a `cluster=slurm` line outside sbatch reads
REQUEUE = "r1lab.infra.slurm.SlurmRequeue"


def readme_lines() -> list[str]:
    """The README's `python -m r1lab.train` and `sbatch slurm/...` lines, from its bash blocks, continuations joined."""
    lines, block, pending = [], False, ""
    for raw in README.read_text().splitlines():
        if raw.startswith("```"):
            block = raw.strip() == "```bash"
            continue
        if not block:
            continue
        pending += raw.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        line, pending = pending.strip(), ""
        if line.startswith("python -m r1lab.train") or re.search(r"\bsbatch\b.*\bslurm/", line):
            lines.append(line)
    return lines


def script_lines() -> list[str]:
    """The example lines in the slurm scripts' comments (`#   sbatch slurm/stage2.sh [overrides]   what it does`)."""
    lines = []
    for script in SCRIPTS:
        for raw in script.read_text().splitlines():
            text = raw.lstrip("#").strip() if raw.startswith("#") and not raw.startswith("#!") else ""
            command = re.split(r"\s{2,}", text)[0]
            if command.startswith(("python -m r1lab.train", "sbatch slurm/", "srun python -m r1lab.train")):
                lines.append(command)
    return lines


LINES = sorted(set(readme_lines() + script_lines()))
RUNNABLE = [line for line in LINES if not PLACEHOLDER.search(line)]


def words(line: str) -> list[str]:
    """The line's words, comments and optional `[...]` parts left out."""
    return shlex.split(OPTIONAL.sub("", line), comments=True)


def sbatch_job(args: list[str]) -> dict[str, str]:
    """SLURM_NNODES / SLURM_NTASKS_PER_NODE of the job `sbatch <args>` submits: run.sbatch's #SBATCH header, then the
    command line's options."""
    header = [line.split()[1] for line in (ROOT / "slurm" / "run.sbatch").read_text().splitlines()
              if line.startswith("#SBATCH")]
    options = dict(o.removeprefix("--").split("=", 1) for o in header + args if o.startswith("--") and "=" in o)
    return {"SLURM_NNODES": options.get("nodes", "1"), "SLURM_NTASKS_PER_NODE": options.get("ntasks-per-node", "1")}


def srun_calls(script: str, args: list[str], env: dict[str, str], tmp_path: Path) -> list[list[str]]:
    """Run `script args` with stand-in `srun` (records its arguments) and `scontrol` (names the script as the job's
    command, as Slurm does): the argument lists of its srun calls."""
    bin_dir, log = tmp_path / "bin", tmp_path / "srun.log"
    bin_dir.mkdir(exist_ok=True)
    log.write_text("")
    (bin_dir / "srun").write_text(f'#!/bin/bash\nfor a in "$@"; do printf "%s\\t" "$a"; done >> {log}\necho >> {log}\n')
    (bin_dir / "scontrol").write_text(f'#!/bin/bash\necho "   Command={ROOT / script} extra"\n')
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    run_env = {**os.environ, **env, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "1",
               "SLURM_SUBMIT_DIR": str(ROOT), "RUNS_DIR": str(tmp_path / "runs")}
    done = subprocess.run(["bash", str(ROOT / script), *args], env=run_env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return [line.rstrip("\t").split("\t") for line in log.read_text().splitlines()]


def train_runs(line: str, tmp_path: Path) -> tuple[list[list[str]], dict[str, str], str, bool]:
    """(the override lists of every training run `line` starts, the Slurm job's environment, the trainer it names,
    whether it runs in a Slurm job: an sbatch line, or one that says `cluster=slurm`)."""
    ws = words(line)
    env = dict(w.split("=", 1) for w in ws[:ws.index("sbatch")]) if "sbatch" in ws else {}
    if "sbatch" not in ws:   # python -m r1lab.train ... (under srun too)
        overrides = ws[ws.index("r1lab.train") + 1:]
        trainer = next((o.split("=", 1)[1] for o in overrides if o.startswith("trainer=")), "default")
        return [overrides], SLURM_JOB, trainer, "cluster=slurm" in overrides
    rest = ws[ws.index("sbatch") + 1:]
    script = next(w for w in rest if w.startswith("slurm/"))
    job = sbatch_job(rest[:rest.index(script)])
    calls = srun_calls(script, rest[rest.index(script) + 1:], {**env, **job}, tmp_path)
    runs = [c[c.index("r1lab.train") + 1:] for c in calls if "r1lab.train" in c]
    assert runs, f"{line}: starts no training run"
    return runs, job, env.get("TRAINER", "ddp"), True


def compose_line(overrides: list[str]):
    """configs/train.yaml with a line's overrides (a sweep's `-m` dropped, each swept key at its first value)."""
    plain = [o if "=" not in o or o.startswith("'") or "," not in o.split("=", 1)[1] or "[" in o or "{" in o
             else o.split(",")[0] for o in overrides if o != "-m"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return compose("train", overrides=plain)


def strategy_class(cfg) -> type | None:
    """The class Lightning builds for `trainer.strategy` (None: Lightning's automatic choice)."""
    strategy = cfg.trainer.get("strategy", "auto")
    if OmegaConf.is_dict(strategy):
        return get_class(strategy._target_)
    return None if strategy == "auto" else StrategyRegistry[strategy]["strategy"]


def expected_strategy(trainer: str) -> type | None:
    if trainer.startswith("deepspeed"):
        return DeepSpeedStrategy
    return {"ddp": DDPStrategy}.get(trainer)


def test_there_are_lines_to_check():
    """The extraction finds the lines it is meant to (a changed README layout must not empty this test)."""
    assert any("sbatch --nodes=4 slurm/stage2.sh" in line for line in RUNNABLE)
    assert any(line.startswith("TRAINER=deepspeed_zero3 sbatch") for line in RUNNABLE)
    assert any("trainer=deepspeed_zero3" in line and "r1lab.train" in line for line in RUNNABLE)
    assert any("sbatch slurm/run.sbatch train" in line for line in RUNNABLE)
    assert any("hydra/launcher=slurm_gpu" in line for line in RUNNABLE)
    skipped = set(LINES) - set(RUNNABLE)
    assert all(PLACEHOLDER.search(line) for line in skipped) and len(skipped) < len(RUNNABLE)


def short(line: str) -> str:
    return re.sub(r"\s+#.*", "", line)[:100]


@pytest.mark.parametrize("line", RUNNABLE, ids=short)
def test_launch_line_places_the_run_as_it_says(line, tmp_path, monkeypatch):
    runs, job, trainer, on_slurm = train_runs(line, tmp_path)
    for name, value in job.items():
        monkeypatch.setenv(name, value)
    for overrides in runs:
        cfg = compose_line(overrides)
        assert strategy_class(cfg) is expected_strategy(trainer), (line, cfg.trainer.get("strategy"))
        nodes = int(job["SLURM_NNODES"]) if on_slurm else 1
        devices = next((o.split("=", 1)[1] for o in overrides if o.startswith("trainer.devices=")), None)
        if devices is None and on_slurm:
            devices = job["SLURM_NTASKS_PER_NODE"]
        assert cfg.trainer.get("num_nodes", 1) == nodes, line
        if devices is not None:
            assert str(cfg.trainer.devices) == devices, line
        requeue = (cfg.get("callbacks") or {}).get("slurm_requeue")
        assert (requeue is not None and requeue._target_ == REQUEUE) == on_slurm, line
        assert not precision_problems(cfg), line   # the model it names keeps fp32 master weights under this trainer


def test_every_sbatch_training_run_is_placed_by_the_job(tmp_path):
    """run.sbatch gives every training run of every stage `cluster=slurm`, whatever TRAINER says."""
    for stage in range(6):
        for trainer in ("ddp", "deepspeed_zero3"):
            calls = srun_calls(f"slurm/stage{stage}.sh", [], {"TRAINER": trainer}, tmp_path)
            runs = [c for c in calls if "r1lab.train" in c]
            assert runs and all("cluster=slurm" in c and f"trainer={trainer}" in c for c in runs), (stage, calls)


def test_every_model_named_exists():
    texts = [README.read_text()] + [p.read_text() for p in SCRIPTS]
    named = {m for text in texts for m in re.findall(r"(?<![\w.])model=([\w.\-]+)", text)}
    assert {"tiny", "qwen2.5-7b"} <= named
    missing = sorted(m for m in named if not (ROOT / "configs" / "model" / f"{m}.yaml").is_file())
    assert not missing, f"configs/model/ has no {missing}"


NAMES_A_MODEL = [line for line in RUNNABLE if line.startswith("python -m r1lab.train") and " model=" in line
                 and "model.path=" not in line]


@pytest.mark.parametrize("line", NAMES_A_MODEL, ids=short)
def test_a_model_named_is_the_model_trained(line):
    """`model=X` without `model.path=` trains X's weights, not a path the experiment pins (an upstream stage's)."""
    overrides = words(line)[3:]
    model = next(o.split("=", 1)[1] for o in overrides if o.startswith("model="))
    cfg = compose_line(overrides)
    preset = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "model" / f"{model}.yaml"))
    assert OmegaConf.to_container(cfg.model)["path"] == preset["path"], f"{line}: model={model} is overridden"
