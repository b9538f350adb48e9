"""Preemption on Slurm: checkpoint on the warning signal, requeue, resume (`cluster=slurm` adds this callback).

Lightning's own SLURM auto-requeue saves the checkpoint inside the signal handler. Under DDP that deadlocks: Python
runs a handler only between bytecodes of the main thread, so a rank blocked in a gradient all-reduce cannot run it
while another rank, already in the handler, waits in `save_checkpoint`'s barrier. `SlurmRequeue` only records the
signal in the handler; at the end of each training step the ranks agree (one tiny all-reduce) whether any of them got
it, and if so all save `hpc_ckpt_<n>.ckpt` in `default_root_dir` together, rank 0 runs `scontrol requeue`, and the
process exits without the end-of-stage export. The requeued job reruns the same command; Lightning resumes from the
newest `hpc_ckpt_*.ckpt` in `default_root_dir` by itself (`ckpt_path=None` under Slurm), so the run directory must be
the same across restarts (a run writes the fixed `<paths.runs_dir>/<task_name>`).

Deliver the signal to the tasks (`#SBATCH --signal=USR1@90`, or `scancel --signal=USR1 <job>`), not with `B:` (that
signals only the batch shell). Installed before Lightning registers its handlers, this handler keeps Lightning's off.
"""

import logging
import os
import signal
import subprocess

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class Requeued(SIGTERMException):
    """Raised on every rank once the hpc checkpoint is saved and the job requeued: ends the process, exit status 1."""

    def __init__(self, message: str):
        super().__init__(1)
        self.message = message


class SlurmRequeue(L.Callback):
    """On `signal_name` under Slurm: at the end of the current training step save an hpc checkpoint on every rank,
    requeue the job from rank 0, and stop. Does nothing outside a Slurm job step (no `srun`)."""

    def __init__(self, signal_name: str = "SIGUSR1", requeue: bool = True):
        self.signum = signal.Signals[signal_name]
        self.requeue = requeue
        self.received = False
        self._previous = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and SLURMEnvironment.detect():
            self._previous = signal.signal(self.signum, self._on_signal)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None

    def _on_signal(self, signum, frame) -> None:
        self.received = True   # acted on at the end of the step, when every rank is at the same point

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if self._previous is None or not trainer.strategy.reduce_boolean_decision(self.received, all=False):
            return
        path = trainer.strategy.broadcast(trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir))
        trainer.save_checkpoint(path)   # collective: every rank calls it here
        job = (f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
               if os.environ.get("SLURM_ARRAY_JOB_ID") else os.environ["SLURM_JOB_ID"])
        message = f"step {trainer.global_step}: saved {path}"
        if trainer.is_global_zero and self.requeue:
            done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, check=False)
            message += f"; scontrol requeue {job}: " + ("ok" if done.returncode == 0 else done.stderr.strip())
        log.warning(message)
        print(f"[rank {trainer.global_rank}] {message}", flush=True)
        raise Requeued(message)
