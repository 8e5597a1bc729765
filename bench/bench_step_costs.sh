#!/usr/bin/env bash
# One device run: where a full-size step's time goes (issues 8 and 15).  bench/bench_step_costs.sh [OUT] [SECONDS]
#   A: the generation worker's compiled denoise at 36 layers, fp8 (no LoRA, LoRA merged) with a kernel profile of
#      3 steps, then bf16 (LoRA merged);
#   B: training 1024^2 without checkpointing, one caption vs captions of 12 lengths, with a profiled step, under
#      torch's SDPA choice and again with cuDNN attention left out (--sdpa flash,efficient,math);
#   C: attention kernels for a key-padding mask (bench_attention.py).
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
part A-fp8
timeout $(( $(left) - 380 )) python3 bench/bench_denoise_paths.py --layers 36 --reps 2 --profile --fp8 \
  --variants layers,layers-merged 2>&1 | tee "$OUT/fp8.log"
part A-bf16
timeout $(( $(left) - 300 )) python3 bench/bench_denoise_paths.py --layers 36 --reps 2 --variants layers-merged \
  2>&1 | tee "$OUT/bf16.log"
part B
timeout $(( $(left) - 160 )) python3 bench/bench_training.py --variants ours-nockpt,ours-varied --warmup 14 --steps 10 \
  --profile 2>&1 | tee "$OUT/train.log"
part B-nocudnn
[ "$(left)" -gt 60 ] && timeout $(( $(left) - 30 )) python3 bench/bench_training.py --variants ours-nockpt,ours-varied \
  --warmup 14 --steps 10 --sdpa flash,efficient,math 2>&1 | tee "$OUT/train_nocudnn.log"
part C
[ "$(left)" -gt 25 ] && timeout $(( $(left) - 5 )) python3 bench/bench_attention.py 2>&1 | tee "$OUT/attn.log"
part end
for f in fp8 bf16 train train_nocudnn attn; do
  [ -f "$OUT/$f.log" ] && { echo "== $f"; sed -n '/^| /,$p' "$OUT/$f.log" | grep -v '^{' | tail -12; }
done
grep -h "^profile\|^  [a-z]" "$OUT/fp8.log" 2>/dev/null | head -6
grep -h "one step:" "$OUT/train.log" 2>/dev/null
