"""`python -m r1lab.pipeline`: the stage graph comes from the experiment files; every stage of the tiny pipeline runs end
to end; a pipeline killed mid-stage and rerun skips the finished stages and resumes the killed one from its checkpoint;
the lineage names each stage's inputs; `executor=slurm` submits the same graph as dependent jobs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from r1lab.infra.findings import NONE
from r1lab.infra.utils import ROOT
from r1lab.pipeline import Lineage, Stage, check_plan, command, init_aim_repo, plan, ready, settings

PIPELINES = sorted(p.stem for p in (ROOT / "configs" / "pipeline").glob("*.yaml"))


def composed(config: str, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return compose(config, overrides=list(overrides), return_hydra_config=True)


def planned(name: str) -> list[Stage]:
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return plan(compose("pipeline", overrides=[f"pipeline={name}"]).pipeline)


def test_the_demo_pipeline_lists_stages_only():
    """The experiment file is the run: the demo pipeline names each stage's entry point and nothing else."""
    demo = OmegaConf.load(ROOT / "configs" / "pipeline" / "demo.yaml")
    assert "overrides" not in demo and set(demo) <= {"name", "dir", "report_copy", "sbatch_args", "jobs", "after",
                                                      "run_args", "stages", "evaluate", "curves"}
    assert all(run in ("build", "train", "sample") for run in demo.stages.values()), "a stage carries settings"
    assert set(demo.evaluate) == {"eval_set", "models"}
    assert all(not args or all(a.startswith("logger=") for a in args) for args in demo.run_args.values())


def test_a_stage_waits_for_the_stages_it_is_told_to_come_after():
    """`after` orders stages that read nothing of each other: the demo's student pre-training waits for the base's
    (in the local schedule and as a Slurm dependency); naming a later stage is refused."""
    stages = {s.name: s for s in planned("demo")}
    assert stages["student_pretrain"].after == ["pretrain"] and not stages["student_pretrain"].needs
    first = [s.name for s in ready(list(stages.values()), {"build"}, {"build"})]
    assert first[0] == "pretrain" and "student_pretrain" not in first
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        with pytest.raises(ValueError, match="after.pretrain names .*student_pretrain"):
            plan(compose("pipeline", overrides=["+pipeline.after.pretrain=[student_pretrain]"]).pipeline)


def test_the_aim_repository_exists_before_stages_start_side_by_side(tmp_path):
    """Two stages starting together (pretrain and student_pretrain) each open an Aim run: the repository is created
    first, so neither races to create it; a pipeline logging without Aim creates none."""
    cfg = composed("pipeline", f"paths.aim_dir={tmp_path}")
    assert init_aim_repo(cfg) == tmp_path / ".aim" and (tmp_path / ".aim").is_dir()
    code = "from aim import Run; r = Run(repo={!r}, experiment='side'); r.track(1.0, name='x'); r.close()"
    procs = [subprocess.Popen([sys.executable, "-c", code.format(str(tmp_path))]) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    plain = composed("pipeline", f"paths.aim_dir={tmp_path / 'csv'}", "pipeline.run_args.train=['logger=csv']")
    assert init_aim_repo(plain) is None and not (tmp_path / "csv").exists()


@pytest.mark.parametrize("name", PIPELINES)
def test_every_stage_reads_only_earlier_stages_and_feeds_a_later_one(name):
    stages = check_plan(planned(name), None)
    names = [s.name for s in stages]
    assert names[0] == "build" and stages[-1].run == "eval"
    read = {n for s in stages for n in s.needs}
    trained = [s for s in stages if s.run in ("train", "sample")]
    for stage in trained:   # the graph is connected: every stage reads an earlier one or is read by a later one
        assert stage.needs or stage.name in read, stage.name
    models = [s.name for s in stages if s.run == "eval"]
    assert all(s.needs[0] == s.name.removeprefix("eval_") for s in stages if s.name in models)


def test_the_demo_graph_is_r1s():
    """R1's order (the paper's Fig. 2, plus distillation), as the experiment files state it."""
    needs = {s.name: set(s.needs) for s in planned("demo")}
    assert needs["reasoning_rl"] == {"cold_start"} and needs["rejection_sampling"] == {"reasoning_rl"}
    assert needs["rejection_sft"] == {"pretrain", "rejection_sampling"}
    assert needs["all_scenarios_rl"] == {"rejection_sft", "reward_model_helpfulness", "reward_model_harmlessness"}
    assert needs["distill"] == {"student_pretrain", "rejection_sampling"}   # SFT alone, as R1
    assert needs["eval_distill"] == {"distill", "reward_model_helpfulness", "reward_model_harmlessness"}


@pytest.mark.parametrize("name", PIPELINES)
def test_every_stage_command_composes(name):
    """Each stage's config (its args, the pipeline's settings) composes before hours are spent on the stages ahead
    of it: a bad override fails here, not when the pipeline reaches it."""
    pipeline = composed("pipeline", f"pipeline={name}", "paths.artifacts_dir=/in")
    for stage in planned(name):
        argv = command(stage, Path("/in") / stage.name, settings(pipeline, stage))
        try:
            cfg = composed(stage.run, *argv[3:])   # after `python -m r1lab.<run>`
        except Exception as e:
            raise AssertionError(f"pipeline={name} stage {stage.name}: {e}") from e
        assert cfg.task_name == stage.name or stage.run == "build", "a stage writes <runs_dir>/<its name>"
        for key in stage.reads:                   # ... and reads the earlier stages of this pipeline
            assert OmegaConf.select(cfg, key).startswith(f"/in/{name}/"), (stage.name, key)


def test_a_stage_run_alone_never_reads_a_pipelines_artifacts():
    """`python -m r1lab.train experiment=reasoning_rl` after `make demo` or `pipeline=tiny` reads artifacts/runs,
    the single run's directory, unless told `paths.runs_dir=artifacts/demo`."""
    cfg = composed("train", "experiment=reasoning_rl", "paths.root_dir=/repo")
    assert cfg.model.path == "/repo/artifacts/runs/cold_start/model"
    cfg = composed("train", "experiment=reasoning_rl", "paths.root_dir=/repo", "paths.runs_dir=/repo/artifacts/demo")
    assert cfg.model.path == "/repo/artifacts/demo/cold_start/model"


def test_a_selected_stage_needs_what_it_reads_finished(tmp_path):
    stages = check_plan(planned("tiny"), ["reasoning_rl"])
    assert [s.name for s in stages] == ["reasoning_rl"]
    with pytest.raises(RuntimeError, match="stage 'cold_start' has not finished"):
        Lineage(tmp_path / "lineage.json", "tiny").check_finished(stages[0], tmp_path, {"reasoning_rl"})
    with pytest.raises(ValueError, match=r"stages=\['nope'\] are not in this pipeline"):
        check_plan(stages, ["nope"])
    with pytest.raises(ValueError, match="'later' is not an earlier stage"):
        check_plan([Stage("a", "train", reads={"model.path": "${stage:later}/model"}), Stage("later", "train")], None)


def test_the_slurm_executor_submits_each_stage_after_the_jobs_it_reads(tmp_path):
    """`executor=slurm`: one `sbatch slurm/run.sbatch` per stage, `--dependency=afterok` on the jobs of the stages its
    experiment file names (and of the build), from the same graph as the local run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/bash\necho "$@" >> "$SBATCH_LOG"\nwc -l < "$SBATCH_LOG"\n')
    (bin_dir / "sbatch").chmod(0o755)
    env = os.environ | {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SBATCH_LOG": str(tmp_path / "sbatch.log")}
    done = subprocess.run([sys.executable, "-m", "r1lab.pipeline", "pipeline=tiny", "executor=slurm",
                           f"paths.artifacts_dir={tmp_path}", f"paths.log_dir={tmp_path / 'logs'}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    calls = (tmp_path / "sbatch.log").read_text().splitlines()
    job = {call.split("--job-name=r1lab-")[1].split()[0]: str(i) for i, call in enumerate(calls, 1)}
    after = {name: set(call.split("--dependency=afterok:")[1].split()[0].split(":")) if "afterok" in call else set()
             for name, call in zip(job, calls)}
    assert after["build"] == set() and after["pretrain"] == {job["build"]}
    assert after["reasoning_rl"] == {job["cold_start"], job["build"]}
    assert after["all_scenarios_rl"] == {job[s] for s in ("build", "rejection_sft", "reward_model_helpfulness",
                                                          "reward_model_harmlessness")}
    call = calls[int(job["reasoning_rl"]) - 1]
    assert f"slurm/run.sbatch train experiment=reasoning_rl paths.artifacts_dir={tmp_path}" in call
    assert f"paths.runs_dir={tmp_path / 'tiny'}" in call


def run_pipeline(root: Path, steps: int, *overrides: str, **popen) -> subprocess.Popen:
    """The tiny pipeline under `root`, its cold start `steps` long with a checkpoint every 5 steps."""
    extra = ["module.optimizer.lr=3e-3", f"trainer.max_steps={steps}", "callbacks.model_checkpoint.every_n_train_steps=5"]
    cmd = [sys.executable, "-m", "r1lab.pipeline", "pipeline=tiny", f"paths.artifacts_dir={root}",
           f"paths.log_dir={root / 'logs'}", f"paths.aim_dir={root}",
           "pipeline.overrides.cold_start=[" + ",".join(f"'{o}'" for o in extra) + "]", *overrides]
    return subprocess.Popen(cmd, cwd=ROOT, env=os.environ | {"OMP_NUM_THREADS": "1"}, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


@pytest.mark.slow
def test_tiny_pipeline_killed_mid_stage_then_rerun_finishes_without_redoing_finished_stages(tmp_path):
    out = tmp_path / "tiny"
    ckpt = out / "cold_start" / "checkpoints" / "last.ckpt"
    first = run_pipeline(tmp_path, 400, "pipeline.jobs=1")                 # one after another: a known kill point
    deadline = time.time() + 900
    while not ckpt.is_file() and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert first.poll() is None, f"the pipeline ended before cold start's first checkpoint:\n{first.stdout.read()}"
    os.killpg(first.pid, signal.SIGKILL)                                   # the pipeline and the stage it runs
    first.wait()
    killed = json.loads((out / "lineage.json").read_text())["stages"]
    assert [killed[s]["status"] for s in ("build", "pretrain", "r1_zero", "cold_start")] == ["done"] * 3 + ["running"]

    second = run_pipeline(tmp_path, 40)
    log, _ = second.communicate(timeout=1800)
    assert second.returncode == 0, log
    for stage in ("build", "pretrain", "r1_zero"):
        assert f"{stage:<26} done before, skipped" in log
    lineage = json.loads((out / "lineage.json").read_text())["stages"]
    assert {s: lineage[s]["started"] for s in ("build", "pretrain", "r1_zero")} == \
        {s: killed[s]["started"] for s in ("build", "pretrain", "r1_zero")}       # not run again
    assert lineage["cold_start"]["resumed_from"] == str(ckpt)
    assert "Restoring states from the checkpoint" in (out / "cold_start" / "stage.log").read_text()
    assert all(entry["status"] == "done" for entry in lineage.values()) and len(lineage) == 16

    for stage in planned("tiny"):                                          # lineage: what fed what
        for key, value in stage.reads.items():
            producer = stage.needs[0] if len(stage.needs) == 1 else lineage[stage.name]["inputs"][key]["from"]
            assert lineage[stage.name]["inputs"][key]["from"] == producer
            assert lineage[stage.name]["inputs"][key]["path"].startswith(str(out / producer))
    used = OmegaConf.load(out / "reasoning_rl" / ".hydra" / "config.yaml")  # ... and the stage really used it
    assert used.model.path == str(out / "cold_start" / "model")
    assert lineage["build"]["git"] and lineage["reasoning_rl"]["command"][:2] == ["-m", "r1lab.train"]

    runs = sorted((time.mktime(time.strptime(lineage[s]["started"], "%Y-%m-%d %H:%M:%S")), lineage[s]["wall_s"])
                  for s in lineage if s not in ("build", "pretrain", "r1_zero"))      # the rerun's, pipeline.jobs=2
    assert any(start < first + wall - 1 for (first, wall), (start, _) in zip(runs, runs[1:]))   # side by side
    report = (out / "report.md").read_text()
    assert all(f"| {model} |" in report for model in ("pretrain", "all_scenarios_rl", "distill"))
    assert "of wall time for them, running up to 2 at once" in report
    assert report.splitlines()[2] == "## Findings" and NONE in report   # tiny evaluates no finding's two models
    assert f"report: {out / 'report.md'}\nFindings:\n{NONE}\n\n| model | pass@1 |" in log   # the run's last lines
    assert all((out / png).is_file() for png in ("reward.png", "pass_at_1.png", "lang_mix.png", "length.png"))


def test_the_demo_report_names_its_commit_machine_and_wall_time(tmp_path):
    """docs/demo-report.md: the commit the stages ran at (from the lineage, not the checkout's), the machine, and the
    pipeline's wall time as its lineage recorded it (stages side by side); the plots stay with the pipeline's
    directory."""
    from r1lab.pipeline import machine, write_demo_report

    report = tmp_path / "demo" / "report.md"
    report.parent.mkdir()
    report.write_text("# Pipeline demo-1\n\n| model | pass@1 |\n|---|---|\n| pretrain | 0.360 |\n\n![reward.png](reward.png)\n")
    lineage = {"pipeline_id": "demo-1", "wall_s": 180.0, "jobs": 2,                  # less than the stages' 3.5 min
               "stages": {"pretrain": {"git": "abcdef1234567890", "wall_s": 120.0},
                          "eval_pretrain": {"git": "abcdef1234567890", "wall_s": 50.0},
                          "eval_distill": {"git": "abcdef1234567890", "wall_s": 40.0}}}
    out = tmp_path / "docs" / "demo-report.md"
    write_demo_report(report, out, lineage)
    text = out.read_text()
    assert text.splitlines()[0] == f"# Demo report: commit abcdef123456, {machine()}, 3.0 min"
    assert "| pretrain | 0.360 |" in text and "![" not in text and "Plots:" in text


def test_a_stage_submitted_to_slurm_counts_as_done_once_its_outputs_exist(tmp_path):
    """Slurm jobs do not update the lineage: a local rerun (for the report) must not train a finished stage again."""
    lineage = Lineage(tmp_path / "lineage.json", "demo")
    stage = Stage("cold_start", "train", ["experiment=cold_start"])
    lineage.record("cold_start", status="submitted", job="7")
    assert not lineage.done(stage, tmp_path / "cold_start")                 # still running on the cluster
    (tmp_path / "cold_start" / "model").mkdir(parents=True)
    assert lineage.done(stage, tmp_path / "cold_start")
    lineage.check_finished(Stage("reasoning_rl", "train", reads={"model.path": "${stage:cold_start}/model"}),
                           tmp_path, {"reasoning_rl"})
