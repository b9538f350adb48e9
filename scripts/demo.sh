#!/usr/bin/env bash
# The demo on a laptop CPU (`make demo`): build the synthetic world and tiny models, pre-train the base model,
# run the cold-start SFT stage from it, and evaluate both on held-out prompts. Extra arguments go to every train run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=artifacts/demo

$PY -m r1lab.build
$PY -m r1lab.train experiment=base hydra.run.dir=$OUT/base "$@"
$PY -m r1lab.eval model_dir=$OUT/base/model template=r1_zero limit=100 output_dir=$OUT/eval/base
$PY -m r1lab.train experiment=cold_start model.path=$OUT/base/model hydra.run.dir=$OUT/cold_start "$@"
$PY -m r1lab.eval model_dir=$OUT/cold_start/model template=chat limit=100 output_dir=$OUT/eval/cold_start
$PY -m r1lab.report base=$OUT/eval/base cold_start=$OUT/eval/cold_start --out $OUT/report.md
