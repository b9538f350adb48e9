#!/bin/bash
# Stage 2, reasoning-oriented RL: GRPO from the cold-start model (accuracy + format + language consistency).
# Writes $R1LAB_OUT/stage2 (model/: what stage 3 samples from). Any Hydra override passes through:
#   sbatch slurm/stage2.sh model=qwen2.5-7b model.path=artifacts/cluster/stage1/model \
#     data.train_files=/data/math/train.jsonl data.where=null
# Settings (ACCELERATOR, PY, R1LAB_OUT, ...): slurm/common.sh. Submit from the repository root.
#SBATCH --job-name=r1lab-stage2
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
srun "$PY" -m r1lab.train experiment=reasoning_rl "${TRAIN[@]}" hydra.run.dir="$R1LAB_OUT/stage2" "$@"
