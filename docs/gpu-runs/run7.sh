#!/bin/bash
# Helper cuda, run 7: the upload path (checkpoint-like weights) against device generation.
set -o pipefail
cd "$(dirname "$0")/.."
.gpu/cuda_backend_test --nocapture --test-threads 1 2>&1 | tail -9
timeout 200 .gpu/moescope check --preset qwen3-next-80b-a3b > $OUT/check_qwen_next.txt 2>&1; echo "rc=$?"
grep -E "weights uploaded|FAIL" $OUT/check_qwen_next.txt; tail -1 $OUT/check_qwen_next.txt
