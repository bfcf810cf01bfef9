#!/bin/bash
# Helper cuda, run 5: split-K expert GEMMs at small batches; router loads overlapped. Final checks.
set -o pipefail
cd "$(dirname "$0")/.."
B=.gpu/moescope
echo "== bench (deepseek-v3 full layer)"
timeout 150 $B bench --path-tokens 1,16,64,512,2048 2>&1 | tee $OUT/bench.txt; echo "rc=$?"
echo "== check --all"
timeout 330 $B check --all > $OUT/check_all.txt 2>&1; echo "rc=$?"
grep -v " ok" $OUT/check_all.txt | tail -20
