#!/bin/bash
# Stage 0, R1-Zero: GRPO straight from the base model with rule rewards (accuracy + format) and the R1-Zero prompt.
# Writes $R1LAB_OUT/stage0 (model/: the R1-Zero model). Any Hydra override passes through:
#   sbatch slurm/stage0.sh model=qwen2.5-7b model.path=/models/Qwen2.5-7B \
#     data.train_files=/data/math/train.jsonl data.where=null
# Settings (ACCELERATOR, PY, R1LAB_OUT, ...): slurm/common.sh. Submit from the repository root.
#SBATCH --job-name=r1lab-stage0
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8        # one task per GPU: Lightning reads the Slurm environment
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=48:00:00
#SBATCH --signal=USR1@90           # to every srun task 90 s before the time limit: Lightning checkpoints and requeues
#SBATCH --requeue
#SBATCH --open-mode=append         # a requeued run appends to the same log
#SBATCH --output=slurm-%x-%j.out
source "${SLURM_SUBMIT_DIR:-.}/slurm/common.sh"
srun "$PY" -m r1lab.train experiment=r1_zero "${TRAIN[@]}" hydra.run.dir="$R1LAB_OUT/stage0" "$@"
