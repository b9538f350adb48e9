#!/bin/bash
# Stage 1, cold start: SFT of the base model on long-CoT data. Any Hydra override passes through:
#   sbatch slurm/stage1.sh model=qwen2.5-7b model.path=/models/Qwen2.5-7B data.train_files=/data/cold_start/train.jsonl
#SBATCH --job-name=r1lab-stage1
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8        # one task per GPU: Lightning reads the Slurm environment
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=SIGUSR1@90        # Lightning checkpoints and requeues on SIGUSR1
#SBATCH --requeue
#SBATCH --output=logs/slurm/%x-%j.out
set -euo pipefail
export HF_HUB_OFFLINE=1
srun python -m r1lab.train experiment=cold_start trainer=ddp trainer.accelerator=gpu \
  trainer.devices="$SLURM_NTASKS_PER_NODE" trainer.num_nodes="$SLURM_NNODES" "$@"
