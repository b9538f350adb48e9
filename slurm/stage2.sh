#!/bin/bash
# Stage 2, reasoning-oriented RL: GRPO from the cold-start model (accuracy + format + language consistency).
# Any Hydra override passes through:
#   sbatch slurm/stage2.sh model=qwen2.5-7b model.path=/ckpt/cold_start/model data.train_files=/data/math/train.jsonl data.where=null
#SBATCH --job-name=r1lab-stage2
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
srun python -m r1lab.train experiment=reasoning_rl trainer=ddp trainer.accelerator=gpu \
  trainer.devices="$SLURM_NTASKS_PER_NODE" trainer.num_nodes="$SLURM_NNODES" "$@"
