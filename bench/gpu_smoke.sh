#!/usr/bin/env bash
# The GPU checks in one go, on a machine with a CUDA GPU (CI has none; there the GPU tests skip):
#   1. `pytest -m gpu`: SFT under each DeepSpeed trainer config and GRPO under ZeRO-3, 2 steps each on the tiny
#      model; each export reloads as a normal HF model and matches the converted ZeRO checkpoint.
#   2. a short demo-sized chain under trainer=deepspeed_zero3: build a small world and the demo model, cold-start
#      SFT, then GRPO (R1-Zero) from its export, then convert the GRPO run's ZeRO checkpoint into an HF directory.
# Usage: bash bench/gpu_smoke.sh [extra Hydra overrides for both train runs]
#   PY=python3 (default .venv/bin/python, else python3); SMOKE_DIR=<dir> (default a new temporary directory);
#   SFT_STEPS=30 GRPO_STEPS=4 DEVICES=1 (GPUs per run; >1 runs DDP-style ranks under DeepSpeed)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
SMOKE_DIR=${SMOKE_DIR:-$(mktemp -d -t r1lab-gpu-smoke.XXXX)}
SFT_STEPS=${SFT_STEPS:-30} GRPO_STEPS=${GRPO_STEPS:-4} DEVICES=${DEVICES:-1}
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_smoke: no CUDA GPU found; nothing to check (the GPU tests skip with 'needs a CUDA GPU')"
  exit 0
fi
$PY -c "import torch, deepspeed, lightning, transformers as t; print('torch', torch.__version__, torch.cuda.get_device_name(0), '| deepspeed', deepspeed.__version__, '| lightning', lightning.__version__, '| transformers', t.__version__)"

echo "== 1. pytest -m gpu"
$PY -m pytest -m gpu -q -p no:cacheprovider tests/test_deepspeed.py

echo "== 2. demo-sized chain under trainer=deepspeed_zero3, in $SMOKE_DIR"
A=$SMOKE_DIR/artifacts
$PY -m r1lab.build paths.artifacts_dir=$A "model_sizes=[demo]" hydra.run.dir=$SMOKE_DIR/build \
  world.sizes.n_reasoning_train=2000 world.sizes.n_general_train=500 world.sizes.n_cold_start=500
COMMON=(model=demo trainer=deepspeed_zero3 trainer.devices=$DEVICES logger=csv paths.artifacts_dir=$A
        trainer.max_epochs=-1 trainer.check_val_every_n_epoch=null trainer.limit_val_batches=2)
$PY -m r1lab.train experiment=cold_start "${COMMON[@]}" model.path=$A/models/demo trainer.max_steps=$SFT_STEPS \
  trainer.val_check_interval=$SFT_STEPS callbacks.model_checkpoint.every_n_train_steps=$SFT_STEPS \
  paths.runs_dir=$SMOKE_DIR "$@"
$PY -m r1lab.train experiment=r1_zero "${COMMON[@]}" model.path=$SMOKE_DIR/cold_start/model rollout=hf \
  module.log_completions_every=0 module.kl_coef=0.01 trainer.max_steps=$GRPO_STEPS \
  trainer.val_check_interval=$GRPO_STEPS callbacks.model_checkpoint.every_n_train_steps=$GRPO_STEPS \
  paths.runs_dir=$SMOKE_DIR "$@"
$PY -m r1lab.convert $SMOKE_DIR/r1_zero/checkpoints/last.ckpt $SMOKE_DIR/r1_zero/converted --model-dir $SMOKE_DIR/cold_start/model
$PY - "$SMOKE_DIR" <<'PY'
import csv, sys
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM
out = Path(sys.argv[1])
for stage in ("cold_start", "r1_zero"):
    rows = list(csv.DictReader(open(out / stage / "csv" / "metrics.csv")))
    last = {k: v for r in rows for k, v in r.items() if v}
    print(stage, {k: last[k] for k in sorted(last) if k.startswith(("train/loss", "val/", "train/reward_mean"))})
export = AutoModelForCausalLM.from_pretrained(out / "r1_zero" / "model")
converted = AutoModelForCausalLM.from_pretrained(out / "r1_zero" / "converted")
diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(export.parameters(), converted.parameters()))
assert diff < 1e-2, diff
print(f"export vs converted ZeRO checkpoint: max |diff| {diff:.2e} (bf16 export vs fp32 masters)")
PY
echo "gpu_smoke: all GPU checks passed ($SMOKE_DIR)"
