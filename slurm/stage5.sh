#!/bin/bash
# Stage 5, distillation: the student base fine-tuned on stage 3's data with a KL term to the stage-3 model, and, as
# R1's control, the same student trained with RL instead (STUDENT_RL=0 skips it). Writes $R1LAB_OUT/stage5/distill and
# $R1LAB_OUT/stage5/student_rl (each with model/). TEACHER: the stage-3 model (default $R1LAB_OUT/stage3/model);
# SAMPLES: stage 3's samples (default $R1LAB_OUT/stage3/samples). The Hydra overrides given go to both runs;
# DISTILL_ARGS and RL_ARGS add overrides (word-split) for one of them:
#   sbatch slurm/stage5.sh model=qwen2.5-1.5b model.path=/models/Qwen2.5-1.5B
# Settings (ACCELERATOR, PY, R1LAB_OUT, ...): slurm/common.sh. Submit from the repository root.
#SBATCH --job-name=r1lab-stage5
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
TEACHER=${TEACHER:-$R1LAB_OUT/stage3/model}
SAMPLES=${SAMPLES:-$R1LAB_OUT/stage3/samples}
if [ ! -f "$R1LAB_OUT/stage5/distill/model/config.json" ]; then   # done before a requeue: not again
  srun "$PY" -m r1lab.train experiment=distill "${TRAIN[@]}" hydra.run.dir="$R1LAB_OUT/stage5/distill" \
    module.teacher_path="$TEACHER" data.sample_dir="$SAMPLES" "$@" ${DISTILL_ARGS:-}
fi
if [ "${STUDENT_RL:-1}" = 1 ]; then
  srun "$PY" -m r1lab.train experiment=student_rl "${TRAIN[@]}" hydra.run.dir="$R1LAB_OUT/stage5/student_rl" \
    "$@" ${RL_ARGS:-}
fi
