#!/bin/bash
# Helper cuda, run 6: the final binary and the GPU tests; route JSON on GPU vs CPU for every golden file.
set -o pipefail
cd "$(dirname "$0")/.."
B=.gpu/moescope
echo "== tests"
.gpu/cuda_kernels_compile_test --nocapture 2>&1 | tail -3
.gpu/cuda_backend_test --nocapture --test-threads 1 2>&1 | tail -12
echo "== route: cuda vs cpu JSON"
for f in tests/data/golden/*.safetensors; do
  n=$(basename $f .safetensors); p=${n%-*}
  $B route --backend cuda --preset $p --logits $f | grep -v '"backend"' > /tmp/g.json || echo "$n: cuda route failed"
  $B route --backend cpu --preset $p --logits $f | grep -v '"backend"' > /tmp/c.json
  if cmp -s /tmp/g.json /tmp/c.json; then echo "$n: identical"; else echo "$n: DIFFERENT"; diff /tmp/g.json /tmp/c.json | head -5; fi
done
echo "== check deepseek-v3, deepseek-v2"
timeout 200 $B check --preset deepseek-v3 > $OUT/check_dsv3.txt 2>&1; echo "rc=$?"; tail -1 $OUT/check_dsv3.txt
timeout 200 $B check --preset deepseek-v2 > $OUT/check_dsv2.txt 2>&1; echo "rc=$?"; tail -1 $OUT/check_dsv2.txt
