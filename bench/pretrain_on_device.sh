#!/usr/bin/env bash
# One device command that pretrains the bundled model and sends it back under $OUT (issue 13).
#   run: bash bench/pretrain_on_device.sh 6.8
# $OUT takes at most 8 files of 16 MiB each, so the checkpoint folder comes back as one tar split in parts:
#   cat o1-shapes.tar.part-* | tar x -C /tmp   (then check o1-shapes.tar.sha256)
set -euo pipefail
MINUTES=${1:-6.8}
export PYTHONUNBUFFERED=1
git log -1 --oneline 2>/dev/null || true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
python3 -m core.pretrain --out /tmp/o1-shapes --minutes "$MINUTES" 2>&1 | tee "$OUT/pretrain.log"
cp /tmp/o1-shapes/pretrain_log.json "$OUT/"
tar cf /tmp/o1-shapes.tar -C /tmp o1-shapes
(cd /tmp && sha256sum o1-shapes.tar > "$OUT/o1-shapes.tar.sha256")
split -b 15M /tmp/o1-shapes.tar "$OUT/o1-shapes.tar.part-"
ls -la "$OUT"
