#!/bin/bash
# Stage 3, rejection sampling + SFT: `r1lab.sample` keeps verified samples of the stage-2 model (one process), then
# the base model (as in R1) is fine-tuned on them mixed with general chat rows. Writes $R1LAB_OUT/stage3 (samples/,
# model/). SAMPLE_FROM: the stage-2 model (default $R1LAB_OUT/stage2/model); SAMPLE_ARGS: overrides for the sampler
# (word-split, e.g. "k=4 limit=1000"). The Hydra overrides given go to the SFT run:
#   SAMPLE_ARGS="k=16" sbatch slurm/stage3.sh model=qwen2.5-7b model.path=/models/Qwen2.5-7B
# Settings (ACCELERATOR, PY, R1LAB_OUT, ...): slurm/common.sh. Submit from the repository root.
#SBATCH --job-name=r1lab-stage3
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
SAMPLE_FROM=${SAMPLE_FROM:-$R1LAB_OUT/stage2/model}
# The sampler is not a Lightning run: the preemption signal ends it and the job fails instead of requeueing, but a
# resubmission with the same settings skips the shards already finished.
srun --nodes=1 --ntasks=1 "$PY" -m r1lab.sample model_dir="$SAMPLE_FROM" output_dir="$R1LAB_OUT/stage3/samples" \
  hydra.run.dir="$R1LAB_OUT/stage3/samples" ${SAMPLE_ARGS:-}
srun "$PY" -m r1lab.train experiment=rejection_sft "${TRAIN[@]}" hydra.run.dir="$R1LAB_OUT/stage3" \
  data.sample_dir="$R1LAB_OUT/stage3/samples" "$@"
