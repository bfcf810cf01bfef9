#!/bin/bash
# Lead, run 14: after folding the unfused router's launches into Timer::launch — the presets that
# exercise every unfused stage (grouped sigmoid+bias, grouped softmax, ungrouped softmax).
set -o pipefail
cd "$(dirname "$0")/../.."
B=$PWD/.gpu/moescope
nvidia-smi -L; date -u
for p in deepseek-v3 deepseek-v2 qwen3-30b-a3b; do
  timeout 120 $B check --preset $p > $OUT/check_$p-run14.txt 2>&1; echo "$p rc=$?: $(tail -1 $OUT/check_$p-run14.txt)"
done
$B run --headless --backend cuda --preset deepseek-v3 --tokens 64 --steps 2 | python3 -c "
import json,sys
for l in sys.stdin:
    r=json.loads(l); print(r['step'], [(p['name'], p['contract']['message'], len(p['timings'])) for p in r['paths']])"
