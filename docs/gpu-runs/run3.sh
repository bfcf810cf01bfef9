#!/bin/bash
# Helper cuda, run 3: cp.async 3-stage grouped GEMM, split-K gate GEMM, parallel align scan, 2-D combine.
set -o pipefail
cd "$(dirname "$0")/.."
B=.gpu/moescope
echo "== bench (deepseek-v3 full layer)"
timeout 200 $B bench --router-tokens 1,64,8192,40000 --path-tokens 1,64,512,2048,8192 2>&1 | tee $OUT/bench.txt; echo "rc=$?"
echo "== check --all"
timeout 330 $B check --all > $OUT/check_all.txt 2>&1; echo "rc=$?"
grep -v " ok" $OUT/check_all.txt | tail -40
