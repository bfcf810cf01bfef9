#!/bin/bash
# Helper router-perf, run 12: final v5 (committed code): sorted lanes at E = 256, rescans at E = 384,
# scores [position][lane]. Router checks on three presets, then bench v5 vs v4 vs unfused.
set -o pipefail
cd "$(dirname "$0")/.."
B=.gpu-router/moescope
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for p in deepseek-v3 kimi-k2 qwen3-next-80b-a3b; do
  echo "== check --preset $p"
  timeout 150 $B check --preset $p > $OUT/check_$p.txt 2>&1; echo "rc=$?"
  grep -E "FAIL" $OUT/check_$p.txt | head -20; grep -E "router_fused" $OUT/check_$p.txt | head -40; tail -1 $OUT/check_$p.txt
done
echo "== bench router (deepseek-v3)"
timeout 120 $B bench --router-only 2>&1 | tee $OUT/bench_router_dsv3.txt; echo "rc=$?"
echo "== bench router (kimi-k2)"
timeout 100 $B bench --router-only --preset kimi-k2 --router-tokens 1,64,8192,40000 2>&1 | tee $OUT/bench_router_kimi.txt; echo "rc=$?"
