"""`python -m r1lab.pipeline`: every stage of the tiny pipeline runs end to end; a pipeline killed mid-stage and rerun
skips the finished stages and resumes the killed one from its checkpoint; the lineage names each stage's inputs."""

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

from r1lab.pipeline import Lineage, Stage, check_plan, command, plan
from r1lab.utils import ROOT

# stage -> {config key: "<producing stage>.<output>"}: R1's order (the paper's Fig. 2, plus distillation)
EXPECTED_INPUTS = {
    "base": {"paths.models_dir": "build.models"},
    "r1_zero": {"model.path": "base.model"},
    "cold_start": {"model.path": "base.model"},
    "reasoning_rl": {"model.path": "cold_start.model"},
    "rejection_sampling": {"model_dir": "reasoning_rl.model"},
    "rejection_sft": {"model.path": "base.model", "data.sample_dir": "rejection_sampling.samples"},
    "reward_model_helpful": {"model.path": "base.model"},
    "reward_model_safety": {"model.path": "base.model"},
    "all_scenarios_rl": {"model.path": "rejection_sft.model",
                         "module.rewards.helpfulness.fn.model_path": "reward_model_helpful.model",
                         "module.rewards.harmlessness.fn.model_path": "reward_model_safety.model"},
    "student_base": {"paths.models_dir": "build.models"},
    "distill": {"model.path": "student_base.model", "module.teacher_path": "rejection_sft.model",
                "data.sample_dir": "rejection_sampling.samples"},
    "student_rl": {"model.path": "student_base.model"},
    "eval_distill": {"model_dir": "distill.model", "judges.unsafe.model_path": "reward_model_safety.model"},
}


def compose_pipeline(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return compose("pipeline", overrides=list(overrides))


@pytest.mark.parametrize("name", ["demo", "tiny"])
def test_every_pipeline_plans_stages_whose_inputs_come_from_earlier_stages(name):
    stages = check_plan(plan(compose_pipeline(f"pipeline={name}").pipeline), None)
    by_name = {s.name: s for s in stages}
    for stage, inputs in EXPECTED_INPUTS.items():
        assert inputs.items() <= by_name[stage].inputs.items(), stage
    assert [s.name for s in stages][:2] == ["build", "base"] and stages[-1].run == "eval"


@pytest.mark.parametrize("name", ["demo", "tiny"])
def test_every_stage_command_composes(name):
    """Each stage's config (its args, the run's args, its inputs, its overrides) composes before hours are spent on
    the stages ahead of it: a bad override fails here, not when the pipeline reaches it."""
    cfg = compose_pipeline(f"pipeline={name}").pipeline
    for stage in plan(cfg):
        inputs = {key: f"/in/{ref}" for key, ref in stage.inputs.items()}
        argv = command(stage, Path("/in") / stage.name, inputs, list(cfg.run_args[stage.run]))
        overrides = argv[3:]  # after `python -m r1lab.<run>`
        GlobalHydra.instance().clear()
        with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
            try:
                composed = compose(stage.run, overrides=overrides)
            except Exception as e:
                raise AssertionError(f"pipeline={name} stage {stage.name}: {e}") from e
        trainer = composed.get("trainer", {})
        if trainer.get("max_epochs") == -1 and isinstance(trainer.get("val_check_interval"), int):
            # Lightning counts an int interval within an epoch unless check_val_every_n_epoch is null, and refuses one
            # longer than the epoch: 125 steps on 543 rows (46 batches) stopped the demo at rejection SFT
            assert trainer.get("check_val_every_n_epoch") is None, f"pipeline={name} stage {stage.name}"


def test_a_selected_stage_needs_its_inputs_finished(tmp_path):
    stages = check_plan(plan(compose_pipeline("pipeline=tiny").pipeline), ["reasoning_rl"])
    assert [s.name for s in stages] == ["reasoning_rl"]
    with pytest.raises(RuntimeError, match="stage 'cold_start' has not finished"):
        Lineage(tmp_path / "lineage.json", "tiny").output(stages[0].inputs["model.path"])
    with pytest.raises(ValueError, match=r"stages=\['nope'\] are not in this pipeline"):
        check_plan(stages, ["nope"])
    with pytest.raises(ValueError, match="input model.path=later.model names no earlier stage's output"):
        check_plan([Stage("a", "train", inputs={"model.path": "later.model"}), Stage("later", "train")], None)


def run_pipeline(root: Path, steps: int, **popen) -> subprocess.Popen:
    """The tiny pipeline under `root`, its cold start `steps` long with a checkpoint every 5 steps."""
    extra = ["module.optimizer.lr=3e-3", f"trainer.max_steps={steps}", "callbacks.model_checkpoint.every_n_train_steps=5"]
    cmd = [sys.executable, "-m", "r1lab.pipeline", "pipeline=tiny", f"paths.artifacts_dir={root}",
           f"paths.log_dir={root / 'logs'}", f"paths.aim_dir={root}",
           "pipeline.stages.cold_start.overrides=[" + ",".join(f"'{o}'" for o in extra) + "]"]
    return subprocess.Popen(cmd, cwd=ROOT, env=os.environ | {"OMP_NUM_THREADS": "1"}, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


@pytest.mark.slow
def test_tiny_pipeline_killed_mid_stage_then_rerun_finishes_without_redoing_finished_stages(tmp_path):
    out = tmp_path / "tiny"
    ckpt = out / "cold_start" / "checkpoints" / "last.ckpt"
    first = run_pipeline(tmp_path, 400)
    deadline = time.time() + 900
    while not ckpt.is_file() and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert first.poll() is None, f"the pipeline ended before cold start's first checkpoint:\n{first.stdout.read()}"
    os.killpg(first.pid, signal.SIGKILL)                                   # the pipeline and the stage it runs
    first.wait()
    killed = json.loads((out / "lineage.json").read_text())["stages"]
    assert [killed[s]["status"] for s in ("build", "base", "r1_zero", "cold_start")] == ["done"] * 3 + ["running"]

    second = run_pipeline(tmp_path, 40)
    log, _ = second.communicate(timeout=1800)
    assert second.returncode == 0, log
    for stage in ("build", "base", "r1_zero"):
        assert f"{stage:<22} done before, skipped" in log
    lineage = json.loads((out / "lineage.json").read_text())["stages"]
    assert {s: lineage[s]["started"] for s in ("build", "base", "r1_zero")} == \
        {s: killed[s]["started"] for s in ("build", "base", "r1_zero")}           # not run again
    assert lineage["cold_start"]["resumed_from"] == str(ckpt)
    assert "Restoring states from the checkpoint" in (out / "cold_start" / "stage.log").read_text()
    assert all(entry["status"] == "done" for entry in lineage.values()) and len(lineage) == 16

    for stage, inputs in EXPECTED_INPUTS.items():                           # lineage: what fed what
        for key, ref in inputs.items():
            producer, _, output = ref.partition(".")
            assert lineage[stage]["inputs"][key] == {"from": ref, "path": lineage[producer]["outputs"][output]}
    used = OmegaConf.load(out / "reasoning_rl" / ".hydra" / "config.yaml")  # ... and the stage really used it
    assert used.model.path == str(out / "cold_start" / "model")
    assert lineage["build"]["git"] and lineage["reasoning_rl"]["command"][:2] == ["-m", "r1lab.train"]

    evals = sorted((lineage[s]["started"], lineage[s]["wall_s"]) for s in lineage if s.startswith("eval_"))
    first_end = time.mktime(time.strptime(evals[0][0], "%Y-%m-%d %H:%M:%S")) + evals[0][1]
    assert time.mktime(time.strptime(evals[1][0], "%Y-%m-%d %H:%M:%S")) < first_end - 1   # evaluate.jobs=2: side by side
    report = (out / "report.md").read_text()
    assert all(f"| {model} |" in report for model in ("base", "all_scenarios_rl", "distill"))
    assert "The evaluations ran 2 at a time" in report
    assert all((out / png).is_file() for png in ("reward.png", "pass_at_1.png", "lang_mix.png", "length.png"))
