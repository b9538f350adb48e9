#!/bin/bash
# The R1 pipeline as a chain of Slurm jobs: each stage is submitted with --dependency=afterok on the one whose
# artifacts it starts from, and reads them from $R1LAB_OUT/<stage>/ (see slurm/stage*.sh):
#   stage0 R1-Zero            base model                                   (independent of the chain)
#   stage1 cold start         base model                     -> stage1/model
#   stage2 reasoning RL       stage1/model                   -> stage2/model
#   stage3 rejection SFT      samples of stage2/model, base  -> stage3/samples, stage3/model
#   stage4 all-scenario RL    reward models from base, RL from stage3/model -> stage4/model
#   stage5 distillation       student base, teacher stage3/model, stage3/samples -> stage5/distill/model
# Run it on the login node, from the repository root:
#   BASE_MODEL=/models/Qwen2.5-7B STUDENT_BASE=/models/Qwen2.5-1.5B slurm/pipeline.sh model=qwen2.5-7b ...
# The Hydra overrides given go to every stage; STAGE<n>_ARGS adds overrides for stage n only (word-split).
# Environment:
#   BASE_MODEL, STUDENT_BASE  the two starting models (default: the experiments' own, i.e. `make demo`'s)
#   STAGES                    which stages to submit (default "0 1 2 3 4 5"; a stage whose input stage is not
#                             submitted runs as soon as it can, from what is already in $R1LAB_OUT)
#   SBATCH_ARGS               extra sbatch flags for every job, e.g. for CPU nodes:
#                             "--gpus-per-node=0 --ntasks-per-node=1 --cpus-per-task=2"
#   R1LAB_OUT, ACCELERATOR, PY, ...: slurm/common.sh (the jobs inherit this environment)
set -euo pipefail
cd "$(dirname "$0")/.."
export R1LAB_OUT=${R1LAB_OUT:-artifacts/cluster}
STAGES=" ${STAGES:-0 1 2 3 4 5} "
mkdir -p "$R1LAB_OUT"
declare -A JOB=()

COMMON=("$@")
# submit <stage> <the stage it depends on> [the stage's inputs as overrides]: records the job id in JOB[<stage>].
# Order on the command line: the overrides given to this script, the inputs, then STAGE<n>_ARGS (later wins).
submit() {
  local stage=$1 after=$2; shift 2
  [[ $STAGES == *" $stage "* ]] || return 0
  local dep=() only="STAGE${stage}_ARGS"
  [ -n "$after" ] && [ -n "${JOB[$after]:-}" ] && dep=(--dependency=afterok:"${JOB[$after]}" --kill-on-invalid-dep=yes)
  JOB[$stage]=$(sbatch --parsable "${dep[@]}" --output="$R1LAB_OUT/slurm-%x-%j.out" ${SBATCH_ARGS:-} \
                "slurm/stage$stage.sh" "${COMMON[@]}" "$@" ${!only:-} | cut -d';' -f1)
  echo "stage$stage: job ${JOB[$stage]}${dep:+ (after job ${JOB[$after]})}"
}

BASE=(${BASE_MODEL:+model.path="$BASE_MODEL"})
OUT=$R1LAB_OUT
submit 0 "" "${BASE[@]}"
submit 1 "" "${BASE[@]}"
submit 2 1 model.path="$OUT/stage1/model"
SAMPLE_FROM=$OUT/stage2/model submit 3 2 "${BASE[@]}"
RM_FROM=${BASE_MODEL:-} submit 4 3 model.path="$OUT/stage3/model"
TEACHER=$OUT/stage3/model SAMPLES=$OUT/stage3/samples submit 5 3 ${STUDENT_BASE:+model.path="$STUDENT_BASE"}
echo "logs and outputs in $R1LAB_OUT; squeue to follow"
