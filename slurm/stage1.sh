#!/bin/bash
# Stage 1, cold start: SFT of the base model on long-CoT data. Writes $R1LAB_OUT/stage1 (model/: what stage 2
# starts from). Any Hydra override passes through:
#   sbatch slurm/stage1.sh model=qwen2.5-7b model.path=/models/Qwen2.5-7B data.train_files=/data/cold_start/train.jsonl
# Settings (ACCELERATOR, PY, R1LAB_OUT, ...): slurm/common.sh. Submit from the repository root.
#SBATCH --job-name=r1lab-stage1
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8        # one task per GPU: Lightning reads the Slurm environment
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@90           # to every srun task 90 s before the time limit: Lightning checkpoints and requeues
#SBATCH --requeue
#SBATCH --open-mode=append         # a requeued run appends to the same log
#SBATCH --output=slurm-%x-%j.out
source "${SLURM_SUBMIT_DIR:-.}/slurm/common.sh"
srun "$PY" -m r1lab.train experiment=cold_start "${TRAIN[@]}" hydra.run.dir="$R1LAB_OUT/stage1" "$@"
