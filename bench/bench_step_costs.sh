#!/usr/bin/env bash
# One device run: where a full-size step's time goes (issues 8 and 15).  bench/bench_step_costs.sh [OUT] [SECONDS]
#   A: training 1024^2 without checkpointing: one caption unpadded / padded to the trainer's 32-token buckets,
#      and captions of 12 lengths (padded): what the prompt buckets cost and what they save;
#   B: attention kernels for a key-padding mask (bench_attention.py);
#   C: the generation worker's compiled denoise, fp8 (plain, LoRA slots) then bf16 (LoRA merged), with a kernel
#      profile of 3 steps each;
#   D: `python -m core.train` with its defaults on a full-size checkpoint in the official layout.
# GPU clocks and power are logged once a second (dmon.log) with each part's start time (parts.log).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/step-costs}
END=$(( $(date +%s) + ${2:-560} ))
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TORCHINDUCTOR_CACHE_DIR=/tmp/o1-inductor-cache
mkdir -p "$OUT"
left() { echo $(( END - $(date +%s) )); }
part() { echo "$(date +%T) $1" | tee -a "$OUT/parts.log"; }
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv,noheader
(nvidia-smi dmon -s pc -o T -d 1 > "$OUT/dmon.log" 2>&1 &)
part A
timeout $(( $(left) - 330 )) python3 bench/bench_training.py --variants ours-nockpt-nopad,ours-nockpt,ours-varied \
  --warmup 14 --steps 10 2>&1 | tee "$OUT/train.log"
part B
timeout 90 python3 bench/bench_attention.py 2>&1 | tee "$OUT/attn.log"
part C-fp8
[ "$(left)" -gt 200 ] && timeout $(( $(left) - 150 )) python3 bench/bench_denoise_paths.py --layers 36 --reps 2 \
  --profile --fp8 --variants layers,layers-slots 2>&1 | tee "$OUT/fp8.log"
part C-bf16
[ "$(left)" -gt 130 ] && timeout $(( $(left) - 100 )) python3 bench/bench_denoise_paths.py --layers 36 --reps 2 \
  --profile --variants layers-merged 2>&1 | tee "$OUT/bf16.log"
part D
[ "$(left)" -gt 90 ] && python3 -m core.fullsize /tmp/o1-full > "$OUT/fullsize.log" 2>&1 && \
  timeout $(( $(left) - 5 )) python3 bench/bench_train_paths.py --model /tmp/o1-full --paths cli-auto --steps 40 \
  --timeout $(( $(left) - 10 )) 2>&1 | tee "$OUT/cli.log"
part end
for f in train attn fp8 bf16 cli; do
  [ -f "$OUT/$f.log" ] && { echo "== $f"; sed -n '/^| /,$p' "$OUT/$f.log" | grep -v '^{' | tail -25; }
done
grep -h "^profile\|^  [a-z]" "$OUT/fp8.log" "$OUT/bf16.log" 2>/dev/null | head -40
