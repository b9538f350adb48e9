#!/usr/bin/env bash
# The demo on a laptop CPU (`make demo`): build the synthetic world and tiny models, pre-train the base model, then
# R1's stages in miniature, each from the model the paper starts it from, and evaluate every model on the same
# held-out arithmetic prompts. Extra arguments go to every train run (e.g. `seed=1`).
#   base -> R1-Zero (GRPO)          base -> cold start (SFT) -> reasoning RL (GRPO) -> rejection sampling
#   base + rejection-sampled data -> rejection SFT
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=artifacts/demo
EVAL=(limit=200 'data.where={task:[arithmetic]}' rollout=vllm)   # vLLM: ~2x transformers' tokens/s here

$PY -m r1lab.build
$PY -m r1lab.train experiment=base hydra.run.dir=$OUT/base "$@"
$PY -m r1lab.eval model_dir=$OUT/base/model template=r1_zero "${EVAL[@]}" output_dir=$OUT/eval/base
$PY -m r1lab.train experiment=r1_zero model.path=$OUT/base/model hydra.run.dir=$OUT/r1_zero "$@"
$PY -m r1lab.eval model_dir=$OUT/r1_zero/model template=r1_zero "${EVAL[@]}" output_dir=$OUT/eval/r1_zero
$PY -m r1lab.train experiment=cold_start model.path=$OUT/base/model hydra.run.dir=$OUT/cold_start "$@"
$PY -m r1lab.eval model_dir=$OUT/cold_start/model template=chat "${EVAL[@]}" output_dir=$OUT/eval/cold_start
$PY -m r1lab.train experiment=reasoning_rl model.path=$OUT/cold_start/model hydra.run.dir=$OUT/reasoning_rl "$@"
$PY -m r1lab.eval model_dir=$OUT/reasoning_rl/model template=chat "${EVAL[@]}" output_dir=$OUT/eval/reasoning_rl
$PY -m r1lab.sample model_dir=$OUT/reasoning_rl/model limit=1000 "data.where={task:[arithmetic]}" rollout=vllm \
  output_dir=$OUT/samples
$PY -m r1lab.train experiment=rejection_sft model.path=$OUT/base/model data.sample_dir=$OUT/samples \
  hydra.run.dir=$OUT/rejection_sft "$@"
$PY -m r1lab.eval model_dir=$OUT/rejection_sft/model template=chat "${EVAL[@]}" output_dir=$OUT/eval/rejection_sft
$PY -m r1lab.report base=$OUT/eval/base r1_zero=$OUT/eval/r1_zero cold_start=$OUT/eval/cold_start \
  reasoning_rl=$OUT/eval/reasoning_rl rejection_sft=$OUT/eval/rejection_sft --out $OUT/report.md
