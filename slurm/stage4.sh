#!/bin/bash
# Stage 4, RL for all scenarios: trains the helpfulness and harmlessness reward models (from RM_FROM, default
# artifacts/demo/base/model as in the experiments), then GRPO from the stage-3 model on reasoning + general prompts,
# scored by them. Writes
# $R1LAB_OUT/stage4/{reward_model_helpful,reward_model_safety,model}. The Hydra overrides given go to every run (put
# the RL run's model.path in them); RM_ARGS adds overrides for the reward-model runs only, RL_ARGS for the RL run
# only (both word-split):
#   RM_FROM=/models/Qwen2.5-7B sbatch slurm/stage4.sh model=qwen2.5-7b model.path=$R1LAB_OUT/stage3/model
# Settings (ACCELERATOR, PY, R1LAB_OUT, ...): slurm/common.sh. Submit from the repository root.
#SBATCH --job-name=r1lab-stage4
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8        # one task per GPU: Lightning reads the Slurm environment
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=72:00:00
#SBATCH --signal=USR1@90           # to every srun task 90 s before the time limit: Lightning checkpoints and requeues
#SBATCH --requeue
#SBATCH --open-mode=append         # a requeued run appends to the same log
#SBATCH --output=slurm-%x-%j.out
source "${SLURM_SUBMIT_DIR:-.}/slurm/common.sh"
OUT=$R1LAB_OUT/stage4
RM_FROM=${RM_FROM:-artifacts/demo/base/model}
for rm in helpful safety; do   # a finished reward model (its model/ exported) is not trained again after a requeue
  [ -f "$OUT/reward_model_$rm/model/config.json" ] && continue
  srun "$PY" -m r1lab.train experiment=reward_model_$rm "${TRAIN[@]}" hydra.run.dir="$OUT/reward_model_$rm" "$@" \
    model.path="$RM_FROM" ${RM_ARGS:-}
done
srun "$PY" -m r1lab.train experiment=all_scenarios_rl "${TRAIN[@]}" hydra.run.dir="$OUT" \
  module.rewards.helpfulness.fn.model_path="$OUT/reward_model_helpful/model" \
  module.rewards.harmlessness.fn.model_path="$OUT/reward_model_safety/model" "$@" ${RL_ARGS:-}
