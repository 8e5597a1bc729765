#!/usr/bin/env bash
# One device run for the generation worker's compiled denoise (issue 8): bench/bench_denoise_paths.sh [OUT] [SECONDS]
#   A: every compile variant at full width on 8 layers (compiles affordable, the ratios hold per layer);
#   B: the worker's default path and eager at 36 layers, a cold compile cache (A used its own), output vs eager (--compare);
#   C: the same in a fresh process with the compile cache B left (a restarted worker's compile time);
#   D: 2048^2 at 36 layers, if time is left. Each part starts only while time is left; the tables come last.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/bench-denoise}
END=$(( $(date +%s) + ${2:-540} ))
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TORCHINDUCTOR_CACHE_DIR=/tmp/o1-inductor-cache
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
date -u
left() { echo $(( END - $(date +%s) )); }
TORCHINDUCTOR_CACHE_DIR=/tmp/o1-inductor-cache-a python3 bench/bench_denoise_paths.py --layers 8 --until $(( END - 300 )) --json "$OUT/a.json" 2>&1 | tee "$OUT/a.log"
[ "$(left)" -gt 150 ] && timeout $(( $(left) - 60 )) python3 bench/bench_denoise_paths.py --layers 36 --reps 2 --compare \
  --variants eager-slots,layers-slots --json "$OUT/b.json" 2>&1 | tee "$OUT/b.log"
[ "$(left)" -gt 50 ] && timeout $(( $(left) - 5 )) python3 bench/bench_denoise_paths.py --layers 36 --reps 1 \
  --variants layers-slots --json "$OUT/c.json" 2>&1 | tee "$OUT/c.log"
[ "$(left)" -gt 70 ] && timeout $(( $(left) - 5 )) python3 bench/bench_denoise_paths.py --layers 36 --reps 1 --steps 50 \
  --size 2048 --variants layers-slots --json "$OUT/d.json" 2>&1 | tee "$OUT/d.log"
date -u
for p in a b c d; do [ -f "$OUT/$p.log" ] && { echo "== part $p"; grep -A20 "^full width" "$OUT/$p.log"; }; done
