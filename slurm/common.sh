# Sourced by every slurm/stage*.sh: what the stages share. Each setting is an environment variable with a default,
# so the GPU scripts run unchanged on a CPU-only cluster, e.g. the local one (scripts/local_slurm.sh):
#   ACCELERATOR=cpu sbatch --gpus-per-node=0 --nodes=2 --ntasks-per-node=1 slurm/stage2.sh model=tiny ...
# ACCELERATOR  gpu | cpu (default gpu)          PRECISION  default bf16-mixed on gpu, 32-true otherwise
# TRAINER      a configs/trainer/ name (default slurm: nodes and devices from the job)
# PY           the Python that runs r1lab (default python; e.g. $PWD/.venv/bin/python)
# R1LAB_OUT    where stages write: <R1LAB_OUT>/<stage>/ holds a stage's checkpoints and its HF model in model/
#              (default artifacts/cluster). A stage's directory is fixed, not timestamped, so a requeued job
#              finds its hpc_ckpt_*.ckpt there and resumes; rerunning a stage into the same directory resumes too.
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
ACCELERATOR=${ACCELERATOR:-gpu}
if [ "$ACCELERATOR" = gpu ]; then PRECISION=${PRECISION:-bf16-mixed}; else PRECISION=${PRECISION:-32-true}; fi
TRAINER=${TRAINER:-slurm}
PY=${PY:-python}
R1LAB_OUT=${R1LAB_OUT:-artifacts/cluster}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
# The trainer part of every `r1lab.train` command line.
TRAIN=(trainer="$TRAINER" trainer.accelerator="$ACCELERATOR" trainer.precision="$PRECISION")
echo "job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0}): ${SLURM_NNODES:-1} node(s) x" \
     "${SLURM_NTASKS_PER_NODE:-1} task(s), $ACCELERATOR, writing to $R1LAB_OUT"
