#!/usr/bin/env bash
# Pretrain models/o1-shapes on the GPU machine in two sittings (its commands end after 10 minutes):
#   bench/pretrain_bundled.sh 1 OUTDIR    # renders pools, trains the first 6.8 min, keeps state in /tmp
#   bench/pretrain_bundled.sh 2 OUTDIR    # right after (same machine): fresh pools, the remaining 7.3 min
# Each part leaves OUTDIR/log.txt and the checkpoint as OUTDIR/m.tar.* (15 MB parts):
#   cat m.tar.* | tar xf - -C models/ && mv models/m models/o1-shapes
# A part 2 that finds no state (a new machine) trains on its own 7.3 minutes from scratch.
#   bench/pretrain_bundled.sh cont OUTDIR  # a continued sitting: from INIT (default models/o1-shapes), fresh
#                                          # AdamW, lr LR (5e-4) cosine to 0 over MIN (7.0) minutes, captions
#                                          # with filler phrases (core.synth.fillers), pools from POOL_START,
#                                          # sigma shifted by SHIFT (1.0: uniform), shape patches weighted
#                                          # 1 + SHAPE_WEIGHT (0), step kinds in the order CYCLE (0,1,2)
set -euo pipefail
part=$1 out=$2
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
state=/tmp/o1-shapes-state.pt
common=(--out /tmp/m --batch 1024,320 --pool 100000,30000 --edit_batch 384 --edit_pool 12000 --lr 1.2e-3
        --state "$state")  # core.pretrain's defaults, spelled out: this is the recipe of the shipped model
if [ "$part" = cont ]; then
  python3 -m core.pretrain --init "${INIT:-models/o1-shapes}" --out /tmp/m --batch 1024,320 --pool 100000,30000 \
    --edit_batch 384 --edit_pool 12000 --lr "${LR:-5e-4}" --warmup 200 --lr_floor 0 --filler 0.3 --sigma_shift "${SHIFT:-1.0}" \
    --minutes "${MIN:-7.0}" --pool_start "${POOL_START:-300000}" --shape_weight "${SHAPE_WEIGHT:-0}" \
    --cycle "${CYCLE:-0,1,2}" 2>&1 | tee "$out/log.txt"
elif [ "$part" = 1 ]; then
  python3 -m core.pretrain "${common[@]}" --minutes 14.1 --stop_after 6.8 2>&1 | tee "$out/log.txt"
elif [ -f "$state" ]; then
  python3 -m core.pretrain "${common[@]}" --minutes 14.1 --stop_after 7.3 --pool_start 100000 2>&1 | tee "$out/log.txt"
else
  python3 -m core.pretrain "${common[@]}" --minutes 7.3 --pool_start 100000 2>&1 | tee "$out/log.txt"
fi
tar cf - -C /tmp m | split -b 15M - "$out/m.tar."
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader || true
