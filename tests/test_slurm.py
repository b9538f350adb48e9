"""The Slurm launchers against a real Slurm cluster: scripts/local_slurm.sh starts one on this machine (a controller
and two emulated nodes, n1 and n2; it needs root, and installs Debian's Slurm with apt when missing), the tests run
slurm/stage2.sh on both nodes with tiny CPU overrides, preempt one run with SIGUSR1, and send a two-trial Hydra
sweep through the submitit launcher. Skipped without root (the cluster cannot be started) or with R1LAB_SKIP_SLURM=1.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from r1lab.infra.utils import ROOT

SCRIPT = ROOT / "scripts" / "local_slurm.sh"
CONF = ROOT / ".local-slurm" / "etc" / "slurm.conf"
STEPS = 12  # the signal comes after step 2: enough steps left that it lands mid-run on a fast CPU too
# both emulated nodes, one CPU process on each: 2-process DDP over gloo
CPU_JOB = ["--gpus-per-node=0", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1"]


@pytest.fixture(scope="session")
def slurm_env():
    """The environment that talks to the local cluster; starts it for the session (and stops it after) if needed."""
    if os.environ.get("R1LAB_SKIP_SLURM") == "1":
        pytest.skip("R1LAB_SKIP_SLURM=1")
    env = {**os.environ, "SLURM_CONF": str(CONF)}
    was_up = subprocess.run([str(SCRIPT), "status"], env=env, capture_output=True, check=False).returncode == 0
    if not was_up:
        if os.geteuid() != 0:
            pytest.skip("no local Slurm cluster: `scripts/local_slurm.sh start` needs root (apt install, daemons)")
        done = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, timeout=900, check=False)
        assert done.returncode == 0, f"scripts/local_slurm.sh start failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
    yield env
    if not was_up:
        subprocess.run([str(SCRIPT), "stop"], capture_output=True, check=False)


def stage_env(slurm_env, out: Path) -> dict:
    return {**slurm_env, "ACCELERATOR": "cpu", "PY": sys.executable, "RUNS_DIR": str(out), "OMP_NUM_THREADS": "1"}


def tiny_grpo(artifacts_dir: Path, out: Path) -> list[str]:
    """Overrides that shrink stage 2 to a few seconds a step; PromptLedger records each rank's prompts per step."""
    return [f"model.path={artifacts_dir}/models/tiny", "model=tiny", f"paths.world_dir={artifacts_dir}/world",
            "rollout=hf", f"trainer.max_steps={STEPS}", "trainer.limit_val_batches=0", "optimized_metric=null",
            f"callbacks.model_checkpoint.every_n_train_steps={STEPS}",   # last.ckpt holds the final step
            "logger=csv", "data.batch_size=4", "module.sampling.n=2", "module.sampling.max_new_tokens=8",
            "+callbacks.ledger._target_=r1lab.infra.callbacks.PromptLedger", f"+callbacks.ledger.out_dir={out}/ledger"]


def ledger_steps(out: Path, rank: int) -> list[int]:
    path = out / "ledger" / f"prompts.rank{rank}.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


def final_step(run_dir: Path) -> int:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]


def squeue_state(job: str, env: dict) -> str:
    done = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], env=env, capture_output=True, text=True, check=False)
    return done.stdout.strip()


@pytest.mark.parametrize("placement", [["trainer=ddp", "cluster=slurm"], ["cluster=slurm", "trainer=ddp"],
                                       ["trainer=deepspeed_zero3", "cluster=slurm"],
                                       ["cluster=slurm", "trainer=deepspeed_zero3"]])
def test_cluster_slurm_reads_nodes_and_devices_from_the_job_under_any_trainer(monkeypatch, placement):
    monkeypatch.setenv("SLURM_NNODES", "4")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "8")
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=reasoning_rl", *placement, "trainer.accelerator=cpu"])
    assert (cfg.trainer.num_nodes, cfg.trainer.devices) == (4, 8)
    strategy = cfg.trainer.strategy
    assert strategy == "ddp" if "trainer=ddp" in placement else "DeepSpeedStrategy" in strategy._target_
    assert cfg.callbacks.slurm_requeue._target_ == "r1lab.infra.slurm.SlurmRequeue"


def test_grpo_optuna_searches_existing_keys_for_held_out_pass_at_1():
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=reasoning_rl", "hparams_search=grpo_optuna"],
                      return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper.direction == "maximize" and cfg.optimized_metric == "val/pass@1"
    for key in sweeper.params:
        assert OmegaConf.select(cfg, key) is not None, key
    assert "module.sampling.n" in sweeper.params   # G


@pytest.fixture(scope="module")
def uninterrupted(slurm_env, artifacts_dir, tmp_path_factory) -> Path:
    """slurm/stage2.sh on both nodes, STEPS steps, never signalled: its RUNS_DIR."""
    out = tmp_path_factory.mktemp("stage2")
    done = subprocess.run(["sbatch", "--wait", *CPU_JOB, f"--output={out}/job.log", "slurm/stage2.sh",
                           *tiny_grpo(artifacts_dir, out)], cwd=ROOT, env=stage_env(slurm_env, out),
                          capture_output=True, text=True, timeout=400, check=False)
    log = (out / "job.log").read_text() if (out / "job.log").exists() else ""
    assert done.returncode == 0, done.stderr[-2000:] + log[-4000:]
    return out


@pytest.mark.slow
def test_stage2_runs_ddp_across_both_nodes(uninterrupted):
    log = (uninterrupted / "job.log").read_text()
    assert "MEMBER: 1/2" in log and "MEMBER: 2/2" in log            # one process per node, world size 2
    for rank in (0, 1):
        assert ledger_steps(uninterrupted, rank) == list(range(STEPS))
    run = uninterrupted / "reasoning_rl"                            # the stage's fixed run directory
    assert final_step(run) == STEPS
    assert (run / "model" / "config.json").is_file()                # the HF export stage 3 samples from


@pytest.mark.slow
def test_preempted_stage2_checkpoints_requeues_and_resumes(slurm_env, artifacts_dir, uninterrupted, tmp_path):
    env = stage_env(slurm_env, tmp_path)
    job = subprocess.Popen(["sbatch", "--wait", "--parsable", *CPU_JOB, f"--output={tmp_path}/job.log",
                            "slurm/stage2.sh", *tiny_grpo(artifacts_dir, tmp_path)], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        job_id = job.stdout.readline().strip().split(";")[0]
        deadline = time.time() + 300
        while len(ledger_steps(tmp_path, 0)) < 2:                   # mid-run: two steps done, handlers installed
            assert job.poll() is None and time.time() < deadline, "job ended or stalled before step 2"
            time.sleep(0.5)
        # what `#SBATCH --signal=USR1@90` sends before the time limit: SIGUSR1 to every task of the job's steps
        subprocess.run(["scancel", "--signal=USR1", job_id], env=env, check=True)
        while squeue_state(job_id, env) != "PENDING":               # requeued (Slurm holds it back ~2 minutes)
            assert job.poll() is None and time.time() < deadline, "the job was not requeued"
            time.sleep(0.5)
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=env, check=True)
        rc = job.wait(timeout=300)
    finally:
        if job.poll() is None:
            subprocess.run(["scancel", job_id], env=env, check=False)
            job.kill()
    log = (tmp_path / "job.log").read_text()
    assert rc == 0, log[-4000:]
    run = tmp_path / "reasoning_rl"
    assert (run / "hpc_ckpt_1.ckpt").is_file() and "scontrol requeue" in log and "restart 1" in log
    assert f"Restored all states from the checkpoint at {run / 'hpc_ckpt_1.ckpt'}" in log
    for rank in (0, 1):                                             # resumed: every step once, none redone
        assert ledger_steps(tmp_path, rank) == list(range(STEPS))
    assert final_step(run) == final_step(uninterrupted / "reasoning_rl") == STEPS
    assert (run / "model" / "config.json").is_file()


@pytest.mark.slow
def test_submitit_sweep_runs_each_trial_as_a_slurm_job(slurm_env, artifacts_dir, tmp_path):
    sweep = tmp_path / "sweep"
    overrides = ["-m", "hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep}",
                 "experiment=r1_zero", "model=tiny", f"model.path={artifacts_dir}/models/tiny",
                 f"paths.world_dir={artifacts_dir}/world", "rollout=hf", "trainer.max_steps=2",
                 "trainer.val_check_interval=2", "trainer.limit_val_batches=1", "data.batch_size=2",
                 "module.sampling.n=2", "module.sampling.max_new_tokens=8", "logger=csv",
                 "callbacks.model_checkpoint=null",
                 "module.optimizer.lr=1e-4,3e-4"]
    done = subprocess.run([sys.executable, "-m", "r1lab.train", *overrides], cwd=ROOT,
                          env={**slurm_env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=400,
                          check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    jobs = sorted(p for p in (sweep / ".submitit").glob("*_*") if p.is_dir())   # array tasks <job>_<trial>
    assert len(jobs) == 2                                           # one Slurm (array) job per trial
    for trial, lr in ((0, 1e-4), (1, 3e-4)):
        cfg = OmegaConf.load(sweep / str(trial) / ".hydra" / "config.yaml")
        assert cfg.module.optimizer.lr == lr
        assert (sweep / str(trial) / "model" / "config.json").is_file()
    for j in jobs:                                                  # ran by submitit inside the Slurm job
        assert "Job completed successfully" in (j / f"{j.name}_0_log.out").read_text()
