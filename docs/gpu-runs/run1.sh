#!/bin/bash
# Smoke + checks + bench for the CUDA backend (helper cuda).
set -o pipefail
cd "$(dirname "$0")/.."
B=.gpu/moescope
nvidia-smi -L
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"; ldconfig -p | grep -E "libcuda.so|nvrtc" | head -5
echo "== run headless qwen3-30b-a3b T=64"
timeout 60 $B run --headless --steps 2 --backend cuda --preset qwen3-30b-a3b -t 64 > $OUT/run_qwen.jsonl; echo "rc=$?"
head -c 1500 $OUT/run_qwen.jsonl; echo
echo "== check qwen3-30b-a3b"
timeout 200 $B check --preset qwen3-30b-a3b 2>&1 | tee $OUT/check_qwen.txt | tail -60; echo "rc=$?"
echo "== check deepseek-v3"
timeout 300 $B check --preset deepseek-v3 2>&1 | tee $OUT/check_dsv3.txt | grep -v " ok" | tail -60; echo "rc=$?"
tail -3 $OUT/check_dsv3.txt
echo "== bench router"
timeout 120 $B bench --router-only 2>&1 | tee $OUT/bench_router.txt; echo "rc=$?"
