#!/bin/bash
# Helper cuda, run 2: faster fused router; all presets checked; full-layer path timings.
set -o pipefail
cd "$(dirname "$0")/.."
B=.gpu/moescope
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv
echo "== bench (deepseek-v3 full layer)"
timeout 240 $B bench --path-tokens 1,64,512,2048,8192 2>&1 | tee $OUT/bench.txt; echo "rc=$?"
echo "== check --all"
timeout 330 $B check --all > $OUT/check_all.txt 2>&1; echo "rc=$?"
grep -v " ok" $OUT/check_all.txt | tail -40
echo "== route golden via CLI"
$B route --backend cuda --preset deepseek-v3 --logits tests/data/golden/deepseek-v3-ties.safetensors | head -c 400; echo
