#!/bin/bash
# R1's pipeline as Slurm jobs, each stage submitted (slurm/run.sbatch) after the jobs of the stages it reads; the graph
# comes from the experiment files, as for `make demo`. Run it on the login node, from the repository root:
#   slurm/pipeline.sh model=qwen2.5-7b ...        (= python -m r1lab.pipeline executor=slurm ...)
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PY:-python}" -m r1lab.pipeline executor=slurm "$@"
