"""R1's whole pipeline as one experiment: `python -m r1lab.pipeline [pipeline=demo] [stages=[...]]` (`r1lab-pipeline`).

A stage is one run of an entry point, `python -m r1lab.<run> experiment=<stage>`, in its own process, writing to
`<pipeline.dir>/<stage>` (the pipeline sets `paths.runs_dir=<pipeline.dir>`). What a stage reads from earlier stages
is written once, in its experiment file, as `${stage:<name>}`; the pipeline composes each stage's config, finds those
references, checks that they name earlier stages, and records them in `<pipeline.dir>/lineage.json` with each stage's
command, git revision, times and whether it resumed. A rerun skips finished stages and resumes an unfinished one from
its last checkpoint. Every listed model is evaluated on the same held-out sets as soon as it is trained, and `report.md`
+ PNG plots are written at the end.

    python -m r1lab.pipeline                                        # the demo (README's main command)
    python -m r1lab.pipeline stages=[reasoning_rl,rejection_sampling]   # only these (what they read must be done)
    python -m r1lab.pipeline pipeline.jobs=1                        # one stage at a time, in the plan's order
    python -m r1lab.pipeline executor=slurm                         # each stage a Slurm job, after those it reads

Every stage's Aim run is grouped by the pipeline id (`R1LAB_PIPELINE_ID`, read by configs/logger/aim.yaml).
Locally, stages run as a graph on one machine: up to `pipeline.jobs` processes at once, each stage as soon as what it
reads (and the build) is done, the earlier stage in the plan first, each process on its share of the cores.
Simplified: a process keeps the threads it started with; on Slurm the jobs run as their dependencies allow, and the
report is left to a local rerun once they are done.
"""

import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from hydra import compose
from omegaconf import DictConfig, OmegaConf

from r1lab.infra.progress import FILE as PROGRESS
from r1lab.infra.progress import Board
from r1lab.infra.report import pipeline_report, summary
from r1lab.infra.utils import ROOT, entry_point

STAGE_REF = re.compile(r"\$\{stage:(\w+)\}")
# What a finished run of each entry point leaves in its directory (name -> path; the first is written last).
OUTPUTS = {"train": {"model": "model"}, "sample": {"manifest": "manifest.json", "samples": "."},
           "eval": {"metrics": "metrics.json"}}
RESUME = {"train": "checkpoints/last.ckpt"}   # rerun with ckpt_path=


@dataclass
class Stage:
    name: str
    run: str                                             # the entry point: r1lab.<run>
    args: list[str] = field(default_factory=list)        # experiment=<name>, or an evaluation's settings
    reads: dict[str, str] = field(default_factory=dict)  # config key -> its value naming earlier stages
    after: list[str] = field(default_factory=list)       # earlier stages it waits for without reading them

    @property
    def needs(self) -> list[str]:
        """The stages this one reads, in order of mention."""
        return list(dict.fromkeys(name for value in self.reads.values() for name in STAGE_REF.findall(value)))


def stage_refs(cfg: DictConfig, prefix: str = "") -> dict[str, str]:
    """Every leaf of an unresolved config whose value names a stage: dotted key -> value.

    >>> stage_refs(OmegaConf.create({"model": {"path": "${stage:cold_start}/model"}, "lr": 1e-3}))
    {'model.path': '${stage:cold_start}/model'}
    """
    found = {}
    items = cfg.items_ex(resolve=False) if OmegaConf.is_dict(cfg) else enumerate(cfg)
    for key, value in items:
        if OmegaConf.is_config(value):
            found |= stage_refs(value, f"{prefix}{key}.")
        elif isinstance(value, str) and STAGE_REF.search(value):
            found[f"{prefix}{key}"] = value
    return found


def plan(pipeline: DictConfig) -> list[Stage]:
    """The pipeline's stages in order, each with what it reads, then one evaluation per listed model.

    Composes every stage's config (inside a Hydra app, or `hydra.initialize_config_dir`)."""
    stages, order = [], (pipeline.get("after") or {})
    for name, run in pipeline.stages.items():
        args = [f"experiment={name}"] if run in OUTPUTS else []
        after = list(order.get(name) or [])
        if set(after) - {s.name for s in stages}:
            raise ValueError(f"pipeline {pipeline.name}: after.{name} names {after}; "
                             "a stage can only wait for earlier ones")
        stages.append(Stage(name, run, args, stage_refs(compose(f"{run}.yaml", overrides=args)) if args else {}, after))
    models = {s.name: s for s in stages}
    ev = pipeline.evaluate
    for model in ev.models:
        if models.get(model, Stage("", "")).run != "train":
            raise ValueError(f"pipeline {pipeline.name}: evaluate.models names {model!r}, not a training stage")
        template = compose("train.yaml", overrides=models[model].args, return_hydra_config=True).hydra.runtime.choices
        args = [f"eval_set={ev.eval_set}", f"model_dir=${{stage:{model}}}/model", f"template={template.template}",
                f"name={model}", f"task_name=eval_{model}"]
        stages.append(Stage(f"eval_{model}", "eval", args, stage_refs(compose("eval.yaml", overrides=args))))
    return stages


def check_plan(stages: list[Stage], selected: list[str] | None) -> list[Stage]:
    """The stages to run (all, or `selected` in pipeline order); every stage must read only earlier stages.

    >>> s = [Stage("a", "train"), Stage("b", "train", reads={"model.path": "${stage:a}/model"})]
    >>> [x.name for x in check_plan(s, ["b"])]
    ['b']
    >>> check_plan(s[::-1], None)
    Traceback (most recent call last):
    ...
    ValueError: stage 'b' reads model.path=${stage:a}/model, but 'a' is not an earlier stage (earlier: [])
    """
    names = [s.name for s in stages]
    unknown = sorted(set(selected or []) - set(names))
    if unknown:
        raise ValueError(f"stages={unknown} are not in this pipeline; its stages: {names}")
    earlier: list[str] = []
    for stage in stages:
        for key, value in stage.reads.items():
            for name in STAGE_REF.findall(value):
                if name not in earlier:
                    raise ValueError(f"stage {stage.name!r} reads {key}={value}, but {name!r} is not an earlier "
                                     f"stage (earlier: {earlier})")
        earlier.append(stage.name)
    return [s for s in stages if selected is None or s.name in selected]


class Lineage:
    """`lineage.json`: per stage its status, inputs (key -> producing stage and path), outputs, command, times; and
    the pipeline's wall time (`wall_s`, summed over the runs that resumed it) with the `jobs` it last ran."""

    def __init__(self, path: Path, name: str):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {
            "pipeline_id": f"{name}-{time.strftime('%Y%m%d-%H%M%S')}", "stages": {}}
        self.lock = threading.Lock()                                   # stages finish concurrently

    def record(self, stage: str, **entry) -> None:
        with self.lock:
            self.data["stages"][stage] = self.data["stages"].get(stage, {}) | entry
            self._write()

    def set_wall(self, seconds: float, jobs: int) -> None:
        """The pipeline's wall time so far, running up to `jobs` stages at once."""
        with self.lock:
            self.data |= {"wall_s": round(seconds, 1), "jobs": jobs}
            self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")                        # atomic: a kill leaves the old or the new
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        os.replace(tmp, self.path)

    def done(self, stage: Stage, stage_dir: Path) -> bool:
        """Finished here, or submitted to Slurm and its outputs written (its job does not update the lineage)."""
        status = self.data["stages"].get(stage.name, {}).get("status")
        submitted = status == "submitted" and stage.run in OUTPUTS
        return (status == "done" or submitted) and outputs_exist(stage, stage_dir)

    def check_finished(self, stage: Stage, out: Path, selected: set[str]) -> None:
        """Fail before running `stage` if a stage it reads neither runs now nor has finished."""
        for name in stage.needs:
            if name not in selected and self.data["stages"].get(name, {}).get("status") not in ("done", "submitted"):
                raise RuntimeError(f"{self.path}: stage {name!r} has not finished, but {stage.name!r} reads "
                                   f"{out / name}; run it first (stages=[{name},...])")


def outputs(stage: Stage, stage_dir: Path) -> dict[str, str]:
    return {name: str(stage_dir / path) for name, path in OUTPUTS.get(stage.run, {}).items()}


def outputs_exist(stage: Stage, stage_dir: Path) -> bool:
    return all(Path(path).exists() for path in outputs(stage, stage_dir).values())


def inputs(stage: Stage, out: Path) -> dict[str, dict[str, str]]:
    """What the lineage records of a stage's reads: key -> producing stage(s) and the path it resolves to."""
    return {key: {"from": ",".join(STAGE_REF.findall(value)),
                  "path": STAGE_REF.sub(lambda m: str(out / m[1]), value)} for key, value in stage.reads.items()}


def git_revision() -> str | None:
    """This checkout's commit, with `+dirty` when files differ from it; None outside a git repository."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return rev.stdout.strip() + ("+dirty" if dirty else "")


def machine() -> str:
    """This machine in a few words: core count, CPU model and its widest vector instructions."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{os.cpu_count()}-core {platform.processor() or platform.machine()}"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "CPU")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{os.cpu_count()}-core {model} ({vector}{', bf16' if 'avx512_bf16' in flags else ''})"


def command(stage: Stage, stage_dir: Path, settings: list[str]) -> list[str]:
    """`python -m r1lab.<run>` with the stage's args, the pipeline's settings, and a resume checkpoint if one exists."""
    resume = stage_dir / RESUME[stage.run] if stage.run in RESUME else None
    return [sys.executable, "-m", f"r1lab.{stage.run}", *stage.args, *settings,
            *([f"ckpt_path={resume}"] if resume and resume.exists() else [])]   # a ZeRO last.ckpt is a directory


def settings(cfg: DictConfig, stage: Stage) -> list[str]:
    """What every stage of this pipeline gets: its paths (so `${stage:x}` is <pipeline.dir>/x), the run's args,
    and, for debug-sized pipelines, the stage's own overrides."""
    paths = [f"paths.{k}={cfg.paths[k]}" for k in cfg.paths if k not in ("root_dir", "output_dir")]
    own = (cfg.pipeline.get("overrides") or {}).get(stage.name) or []
    return [*paths, *(cfg.pipeline.run_args.get(stage.run) or []), *own]


def run_stage(stage: Stage, stage_dir: Path, cmd: list[str], env: dict[str, str], board: Board | None = None,
              head: str | None = None) -> float:
    """Run one stage's process, its output to `<stage_dir>/stage.log`, its `progress.json` shown live on `board`
    (default: stdout) on the line `head`; raise with the log's tail if it fails."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    log_path, start = stage_dir / "stage.log", time.perf_counter()
    (stage_dir / PROGRESS).unlink(missing_ok=True)   # a killed run's, not this one's
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        with subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT) as proc:
            try:
                code = (board or Board()).watch(proc, stage_dir / PROGRESS, head or stage.name)
            except BaseException:   # as subprocess.run: an interrupted pipeline does not leave its stage running
                proc.kill()
                raise
    if code != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"stage {stage.name!r} failed (exit {code}); last lines of {log_path}:\n{tail}")
    if not outputs_exist(stage, stage_dir):
        raise RuntimeError(f"stage {stage.name!r} exited 0 but did not write {list(OUTPUTS[stage.run].values())} "
                           f"in {stage_dir}; see {log_path}")
    return time.perf_counter() - start


def prerequisites(stage: Stage, stages: list[Stage]) -> set[str]:
    """What `stage` waits for among `stages`: the stages it reads or is told to come `after`, and the build (whose
    world every stage uses).

    >>> s = [Stage("build", "build"), Stage("a", "train"), Stage("b", "eval", reads={"model_dir": "${stage:a}/model"}),
    ...      Stage("c", "train", after=["a"])]
    >>> sorted(prerequisites(s[2], s)), sorted(prerequisites(s[2], s[1:])), prerequisites(s[0], s)
    (['a', 'build'], ['a'], set())
    >>> sorted(prerequisites(s[3], s))
    ['a', 'build']
    """
    builds = [s.name for s in stages if s.run == "build"]
    return ({*stage.needs, *stage.after, *builds} & {s.name for s in stages}) - {stage.name}


def ready(stages: list[Stage], done: set[str], started: set[str]) -> list[Stage]:
    """The stages not yet started whose prerequisites are all done, in plan order (the earlier stage first: the main
    chain, planned first, is never starved by a branch or an evaluation).

    >>> s = [Stage("build", "build"), Stage("a", "train"), Stage("b", "train", reads={"p": "${stage:a}/model"}),
    ...      Stage("s", "train"), Stage("eval_a", "eval", reads={"model_dir": "${stage:a}/model"})]
    >>> [x.name for x in ready(s, set(), set())]
    ['build']
    >>> [x.name for x in ready(s, {"build"}, {"build"})]
    ['a', 's']
    >>> [x.name for x in ready(s, {"build", "a"}, {"build", "a", "s"})]
    ['b', 'eval_a']
    """
    return [s for s in stages if s.name not in started and prerequisites(s, stages) <= done]


def threads(cores: int, running: int) -> int | None:
    """OMP_NUM_THREADS of a stage that starts with `running` processes running (itself included): its share of the
    cores, or None (the environment's: every core by default) when it starts alone.

    >>> threads(2, 1), threads(2, 2), threads(16, 3), threads(1, 2)
    (None, 1, 5, 1)
    """
    return None if running <= 1 else max(1, cores // running)


def run_local(cfg: DictConfig, stages: list[Stage], out: Path, lineage: Lineage) -> bool:
    """The stages as a graph, up to `pipeline.jobs` processes at once: each as soon as its `prerequisites` are done
    (an evaluation as soon as its model is trained), the earliest `ready` in the plan first, each on its share of the
    cores (`threads`). A failed stage's dependents do not start, the others run on, then its error is raised.
    Returns whether any stage ran."""
    env = os.environ | {"R1LAB_PIPELINE_ID": lineage.data["pipeline_id"], "HYDRA_FULL_ERROR": "1"}
    revision, selected = git_revision(), {s.name for s in stages}
    index, board = {s.name: i for i, s in enumerate(stages, 1)}, Board()
    jobs, cores = int(cfg.pipeline.get("jobs") or 1), os.cpu_count() or 1

    def head(stage: Stage) -> str:
        return f"[{index[stage.name]:2d}/{len(stages)}] {stage.name:<26}"

    def execute(stage: Stage, omp: int | None) -> None:
        stage_dir = out / stage.name
        lineage.check_finished(stage, out, selected)
        cmd = command(stage, stage_dir, settings(cfg, stage))
        resumed = next((a.split("=", 1)[1] for a in cmd if a.startswith("ckpt_path=")), None)
        board.line(f"{head(stage)} running{' (resuming ' + resumed + ')' if resumed else ''}, "
                   f"log: {stage_dir / 'stage.log'}")
        lineage.record(stage.name, status="running", run=f"r1lab.{stage.run}", command=cmd[1:], git=revision,
                       inputs=inputs(stage, out), resumed_from=resumed, started=time.strftime("%Y-%m-%d %H:%M:%S"))
        stage_env = env | {"R1LAB_STAGE": stage.name} | ({"OMP_NUM_THREADS": str(omp)} if omp else {})
        seconds = run_stage(stage, stage_dir, cmd, stage_env, board, head(stage))
        lineage.record(stage.name, status="done", wall_s=round(seconds, 1),
                       config=str(stage_dir / ".hydra" / "config.yaml"), outputs=outputs(stage, stage_dir))
        board.line(f"{head(stage)} done in {seconds / 60:.1f} min")

    done = {s.name for s in stages if lineage.done(s, out / s.name)}
    ran = len(done) < len(stages)
    for stage in stages:
        if stage.name in done:
            board.line(f"{head(stage)} done before, skipped")
    started, running, failed = set(done), {}, {}
    base, begin = pipeline_wall_s(lineage.data), time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while True:
            batch = ready(stages, done, started)[:jobs - len(running)]
            share = threads(cores, len(running) + len(batch))       # the batch starts together
            for stage in batch:
                started.add(stage.name)
                running[pool.submit(execute, stage, share)] = stage
            if not running:
                break
            for future in wait(running, return_when=FIRST_COMPLETED).done:
                stage, error = running.pop(future), future.exception()
                if error is None:
                    done.add(stage.name)
                else:                                               # its dependents never become ready
                    failed[stage.name], reason = error, str(error).partition("\n")[0]
                    board.line(f"{head(stage)} failed: {reason}")
            lineage.set_wall(base + time.perf_counter() - begin, jobs)
    for stage in stages:
        if stage.name not in started:
            board.line(f"{head(stage)} not run: {', '.join(failed)} failed")
    if failed:
        raise next(iter(failed.values()))
    return ran


def submit_slurm(cfg: DictConfig, stages: list[Stage], out: Path, lineage: Lineage) -> dict[str, str]:
    """One `sbatch slurm/run.sbatch <run> <args>` per unfinished stage, `--dependency=afterok` on the jobs of the
    stages it reads (and of the build, which every stage uses); returns stage -> job id."""
    jobs: dict[str, str] = {}
    build = next((s.name for s in stages if s.run == "build"), None)
    env = os.environ | {"R1LAB_PIPELINE_ID": lineage.data["pipeline_id"]}
    for stage in stages:
        stage_dir = out / stage.name
        if lineage.done(stage, stage_dir):
            print(f"{stage.name:<26} done before, not submitted", flush=True)
            continue
        after = [jobs[n] for n in dict.fromkeys([*stage.needs, *stage.after, build]) if n in jobs and n != stage.name]
        cmd = ["sbatch", "--parsable", f"--job-name=r1lab-{stage.name}", f"--output={out}/slurm-%x-%j.out",
               *([f"--dependency=afterok:{':'.join(after)}", "--kill-on-invalid-dep=yes"] if after else []),
               *cfg.pipeline.sbatch_args, str(ROOT / "slurm" / "run.sbatch"),
               stage.run, *command(stage, stage_dir, settings(cfg, stage))[3:]]
        out.mkdir(parents=True, exist_ok=True)
        job = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT,
                             env=env | {"R1LAB_STAGE": stage.name}).stdout.strip().split(";")[0]
        jobs[stage.name] = job
        lineage.record(stage.name, status="submitted", job=job, after=after, command=cmd[1:],
                       inputs=inputs(stage, out), started=time.strftime("%Y-%m-%d %H:%M:%S"))
        print(f"{stage.name:<26} job {job}{' after ' + ','.join(after) if after else ''}", flush=True)
    return jobs


def pipeline_wall_s(lineage: dict) -> float:
    """The pipeline's wall time from its lineage: as recorded, or (an older lineage) its stages one after another.

    >>> pipeline_wall_s({"wall_s": 90.0, "stages": {"a": {"wall_s": 60.0}, "b": {"wall_s": 50.0}}})
    90.0
    >>> pipeline_wall_s({"stages": {"a": {"wall_s": 60.0}, "b": {"status": "running"}}})
    60.0
    """
    if lineage.get("wall_s") is not None:
        return lineage["wall_s"]
    return sum(s.get("wall_s") or 0 for s in lineage["stages"].values())


def write_demo_report(report: Path, copy_to: Path, lineage: dict) -> None:
    """The report at `copy_to` (docs/demo-report.md), headed by the commit, the machine and the wall time; its plots
    stay with the pipeline's directory."""
    commits = sorted({s["git"] for s in lineage["stages"].values() if s.get("git")}) or [git_revision()]
    minutes = pipeline_wall_s(lineage) / 60
    header = f"Demo report: commit {', '.join(c[:12] for c in commits)}, {machine()}, {minutes:.1f} min"
    body = [line for line in report.read_text().splitlines()[1:] if not line.startswith("![")]
    copy_to.parent.mkdir(parents=True, exist_ok=True)
    copy_to.write_text("\n".join([f"# {header}", *body, "", f"Plots: `{os.path.relpath(report.parent, ROOT)}/*.png`."]) + "\n")


def init_aim_repo(cfg: DictConfig) -> Path | None:
    """Create the Aim repository the stages log to (`logger=aim*` in a run's args) before any stage starts: Aim
    creates it on first use, and two stages starting side by side would race to (one fails). Returns its directory."""
    args = [a for run_args in cfg.pipeline.run_args.values() for a in run_args or []]
    if not any(a.startswith("logger=aim") for a in args):
        return None
    from aim import Repo

    Repo.from_path(str(cfg.paths.aim_dir), init=True)
    return Path(cfg.paths.aim_dir) / ".aim"


def run(cfg: DictConfig) -> Path:
    """Run (or submit) the selected stages that are not finished, then write the report; returns the pipeline dir."""
    out = Path(cfg.pipeline.dir)
    out.mkdir(parents=True, exist_ok=True)
    every = plan(cfg.pipeline)
    stages = check_plan(every, list(cfg.stages) if cfg.get("stages") else None)
    lineage, begin = Lineage(out / "lineage.json", cfg.pipeline.name), time.perf_counter()
    init_aim_repo(cfg)
    if cfg.executor == "slurm":
        submit_slurm(cfg, stages, out, lineage)
        return out
    if cfg.executor != "local":
        raise ValueError(f"executor={cfg.executor!r}: use local or slurm")
    ran = run_local(cfg, stages, out, lineage)
    report = pipeline_report(out, lineage.data, list(cfg.pipeline.curves))
    if ran and cfg.pipeline.get("report_copy") and all(lineage.done(s, out / s.name) for s in every):
        write_demo_report(report, Path(cfg.pipeline.report_copy), lineage.data)
    print(f"{len(stages)} stages in {(time.perf_counter() - begin) / 60:.1f} min; report: {report}", flush=True)
    print(summary(lineage.data), flush=True)   # the findings and a few columns; report.md has the rest
    return out


@entry_point("pipeline.yaml")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
