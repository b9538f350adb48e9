#!/bin/bash
# R1's pipeline as Slurm jobs, each stage submitted (slurm/run.sbatch) after the jobs of the stages it reads; the graph
# comes from the experiment files, as for `make demo`. Run it on the login node, from the repository root:
#   slurm/pipeline.sh [stages=[cold_start,reasoning_rl]] ['pipeline.sbatch_args=[--partition=gpu]']
# (= python -m r1lab.pipeline executor=slurm ...). Each stage's settings are its experiment file's; the pipeline's
# runs_dir (<pipeline.dir>) is where they read each other, so put a base model you bring at <pipeline.dir>/pretrain/model.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PY:-python}" -m r1lab.pipeline executor=slurm "$@"
