#!/bin/bash
# R1-Zero: GRPO straight from the base model with rule rewards (accuracy + format) and the R1-Zero prompt.
# Any Hydra override passes through:
#   sbatch slurm/r1_zero.sh model=qwen2.5-7b model.path=/models/Qwen2.5-7B data.train_files=/data/math/train.jsonl data.where=null
#SBATCH --job-name=r1lab-r1-zero
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8        # one task per GPU: Lightning reads the Slurm environment
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=48:00:00
#SBATCH --signal=SIGUSR1@90        # Lightning checkpoints and requeues on SIGUSR1
#SBATCH --requeue
#SBATCH --output=logs/slurm/%x-%j.out
set -euo pipefail
export HF_HUB_OFFLINE=1
srun python -m r1lab.train experiment=r1_zero trainer=ddp trainer.accelerator=gpu \
  trainer.devices="$SLURM_NTASKS_PER_NODE" trainer.num_nodes="$SLURM_NNODES" "$@"
