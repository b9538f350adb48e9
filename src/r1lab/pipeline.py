"""R1's whole pipeline as one experiment: `python -m r1lab.pipeline [pipeline=demo] [stages=[...]]` (`r1lab-pipeline`).

A stage is one run of an entry point (`python -m r1lab.<run> <args>`) in its own process and its own directory
`<pipeline.dir>/<stage>`. Its `inputs` map config keys to earlier stages' outputs (`model.path: base.model`), resolved
from what those stages recorded in `<pipeline.dir>/lineage.json`, which also keeps each stage's command, git revision,
times and whether it resumed. A rerun skips finished stages and resumes an unfinished one from its last checkpoint.
After the stages, every listed model is evaluated on the same held-out sets and `report.md` + PNG plots are written.

    python -m r1lab.pipeline                                          # the demo (README's main command)
    python -m r1lab.pipeline stages=[reasoning_rl,rejection_sampling] # only these (their inputs must be finished)
    python -m r1lab.pipeline 'pipeline.stages.reasoning_rl.overrides=["trainer.max_steps=60"]'

Every stage's Aim run is grouped by the pipeline id (`R1LAB_PIPELINE_ID`, read by configs/logger/aim.yaml).
Simplified: stages run one after another on one machine; `slurm/pipeline.sh` submits the same stages as Slurm jobs.
"""

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from r1lab.report import pipeline_report
from r1lab.utils import ROOT, set_root

set_root()


@dataclass
class Stage:
    name: str
    run: str                                            # the entry point: r1lab.<run>
    args: list[str] = field(default_factory=list)       # Hydra overrides that define the stage
    inputs: dict[str, str] = field(default_factory=dict)   # config key -> "<stage>.<output>"
    outputs: dict[str, str] = field(default_factory=dict)  # output name -> path inside the stage's directory
    resume: str | None = None                           # a checkpoint inside the directory: rerun with ckpt_path=
    overrides: list[str] = field(default_factory=list)  # the user's extra overrides, applied last
    concurrent: bool = False                            # an evaluation: runs after the stages, `evaluate.jobs` at a time


def plan(cfg: DictConfig) -> list[Stage]:
    """The pipeline's stages in order: the configured ones, then one evaluation per listed model."""
    shared = dict(cfg.inputs or {})
    stages = []
    for name, spec in ((n, s) for n, s in cfg.stages.items() if s is not None):   # null drops a stage
        spec = OmegaConf.to_container(spec, resolve=True)
        own = {k: v for k, v in shared.items() if v.split(".")[0] != name}   # the stage that makes them takes none
        stages.append(Stage(name=name, **{**spec, "inputs": own | (spec.get("inputs") or {})}))
    ev = OmegaConf.to_container(cfg.evaluate, resolve=True)
    for model, template in ((m, t) for m, t in (ev.get("models") or {}).items() if t is not None):
        stages.append(Stage(name=f"eval_{model}", run="eval", args=[*ev["args"], f"template={template}", f"name={model}"],
                            inputs=shared | {"model_dir": f"{model}.model"} | (ev.get("inputs") or {}),
                            outputs={"metrics": "metrics.json"}, concurrent=True))
    return stages


def check_plan(stages: list[Stage], selected: list[str] | None) -> list[Stage]:
    """The stages to run (all, or `selected` in pipeline order); every input must come from an earlier stage.

    >>> s = [Stage("a", "build", outputs={"m": "m"}), Stage("b", "train", inputs={"model.path": "a.m"})]
    >>> [x.name for x in check_plan(s, ["b"])]
    ['b']
    >>> check_plan(s[::-1], None)
    Traceback (most recent call last):
    ...
    ValueError: stage 'b': input model.path=a.m names no earlier stage's output (earlier: [])
    """
    names = [s.name for s in stages]
    unknown = sorted(set(selected or []) - set(names))
    if unknown:
        raise ValueError(f"stages={unknown} are not in this pipeline; its stages: {names}")
    made: dict[str, set[str]] = {}
    for stage in stages:
        for key, ref in stage.inputs.items():
            producer, _, output = ref.partition(".")
            if output not in made.get(producer, set()):
                raise ValueError(f"stage {stage.name!r}: input {key}={ref} names no earlier stage's output "
                                 f"(earlier: {sorted(made)})")
        made[stage.name] = set(stage.outputs)
    return [s for s in stages if selected is None or s.name in selected]


class Lineage:
    """`lineage.json`: per stage its status, inputs (key -> producing stage and path), outputs, command, times."""

    def __init__(self, path: Path, name: str):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {
            "pipeline_id": f"{name}-{time.strftime('%Y%m%d-%H%M%S')}", "stages": {}}
        self.lock = threading.Lock()                                   # evaluations finish concurrently

    def record(self, stage: str, **entry) -> None:
        with self.lock:
            self.data["stages"][stage] = self.data["stages"].get(stage, {}) | entry
            self._write()

    def set_evaluation(self, **entry) -> None:
        """How the last batch of evaluations ran: `jobs` at a time, in `wall_s` seconds."""
        with self.lock:
            self.data["evaluation"] = entry
            self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")                        # atomic: a kill leaves the old or the new
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        os.replace(tmp, self.path)

    def done(self, stage: Stage, stage_dir: Path) -> bool:
        entry = self.data["stages"].get(stage.name, {})
        return entry.get("status") == "done" and all((stage_dir / p).exists() for p in stage.outputs.values())

    def output(self, ref: str) -> str:
        producer, _, output = ref.partition(".")
        entry = self.data["stages"].get(producer, {})
        if entry.get("status") != "done":
            raise RuntimeError(f"{self.path}: stage {producer!r} has not finished, but a selected stage needs its "
                               f"{output!r}; run it first (stages=[{producer},...])")
        return entry["outputs"][output]


def git_revision() -> str | None:
    """This checkout's commit, with `+dirty` when files differ from it; None outside a git repository."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return rev.stdout.strip() + ("+dirty" if dirty else "")


def command(stage: Stage, stage_dir: Path, inputs: dict[str, str], run_args: list[str]) -> list[str]:
    """`python -m r1lab.<run>` with the stage's args, its per-run args, its resolved inputs and the user's overrides."""
    resume = [f"ckpt_path={stage_dir / stage.resume}"] if stage.resume and (stage_dir / stage.resume).is_file() else []
    return [sys.executable, "-m", f"r1lab.{stage.run}", *stage.args, *run_args,
            *(f"{key}={path}" for key, path in inputs.items()), f"hydra.run.dir={stage_dir}", *resume,
            *stage.overrides]


def run_stage(stage: Stage, stage_dir: Path, cmd: list[str], env: dict[str, str]) -> float:
    """Run one stage's process, its output to `<stage_dir>/stage.log`; raise with the log's tail if it fails."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    log_path, start = stage_dir / "stage.log", time.perf_counter()
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        code = subprocess.run(cmd, check=False, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    if code != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"stage {stage.name!r} failed (exit {code}); last lines of {log_path}:\n{tail}")
    missing = [p for p in stage.outputs.values() if not (stage_dir / p).exists()]
    if missing:
        raise RuntimeError(f"stage {stage.name!r} exited 0 but did not write {missing} in {stage_dir}; see {log_path}")
    return time.perf_counter() - start


def run(cfg: DictConfig) -> Path:
    """Run the selected stages that are not finished, then write the report; returns the pipeline directory.

    Stages run one after another with every core; then the evaluations, `evaluate.jobs` at a time, each with its
    share of the cores (OMP_NUM_THREADS)."""
    out = Path(cfg.pipeline.dir)
    out.mkdir(parents=True, exist_ok=True)
    stages = check_plan(plan(cfg.pipeline), list(cfg.stages) if cfg.get("stages") else None)
    lineage = Lineage(out / "lineage.json", cfg.pipeline.name)
    env = os.environ | {"R1LAB_PIPELINE_ID": lineage.data["pipeline_id"], "HYDRA_FULL_ERROR": "1"}
    revision, begin = git_revision(), time.perf_counter()
    numbered = list(enumerate(stages, 1))

    def execute(i: int, stage: Stage, threads: int | None = None) -> None:
        stage_dir = out / stage.name
        head = f"[{i:2d}/{len(stages)}] {stage.name:<22}"
        if lineage.done(stage, stage_dir):
            print(f"{head} done before, skipped", flush=True)
            return
        inputs = {key: lineage.output(ref) for key, ref in stage.inputs.items()}
        cmd = command(stage, stage_dir, inputs, list(cfg.pipeline.run_args.get(stage.run) or []))
        resumed = next((a.split("=", 1)[1] for a in cmd if a.startswith("ckpt_path=")), None)
        print(f"{head} running{' (resuming ' + resumed + ')' if resumed else ''}, log: {stage_dir / 'stage.log'}",
              flush=True)
        lineage.record(stage.name, status="running", run=f"r1lab.{stage.run}", command=cmd[1:], git=revision,
                       inputs={k: {"from": stage.inputs[k], "path": v} for k, v in inputs.items()},
                       resumed_from=resumed, started=time.strftime("%Y-%m-%d %H:%M:%S"))
        stage_env = env | {"R1LAB_STAGE": stage.name} | ({"OMP_NUM_THREADS": str(threads)} if threads else {})
        seconds = run_stage(stage, stage_dir, cmd, stage_env)
        lineage.record(stage.name, status="done", wall_s=round(seconds, 1),
                       config=str(stage_dir / ".hydra" / "config.yaml"),
                       outputs={k: str(stage_dir / p) for k, p in stage.outputs.items()})
        print(f"{head} done in {seconds / 60:.1f} min", flush=True)

    for i, stage in numbered:
        if not stage.concurrent:
            execute(i, stage)
    evaluations = [(i, s) for i, s in numbered if s.concurrent]
    pending = any(not lineage.done(s, out / s.name) for _, s in evaluations)
    jobs = int(cfg.pipeline.evaluate.get("jobs") or 1)
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:   # a failure is raised after the others finish
        list(pool.map(lambda item: execute(*item, threads=threads), evaluations))
    if pending:
        lineage.set_evaluation(jobs=jobs, wall_s=round(time.perf_counter() - start, 1))
    report = pipeline_report(out, lineage.data, list(cfg.pipeline.curves))
    print(f"{len(stages)} stages in {(time.perf_counter() - begin) / 60:.1f} min; report: {report}", flush=True)
    return out


@hydra.main(version_base="1.3", config_path=str(ROOT / "configs"), config_name="pipeline.yaml")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
