#!/bin/bash
# Helper cuda, run 8: branch cuda merged with main; checkpoint + captured hidden states on the GPU.
set -o pipefail
cd "$(dirname "$0")/.."
.gpu/cuda_checkpoint_test --nocapture 2>&1 | tail -4
.gpu/cuda_backend_test --nocapture --test-threads 1 2>&1 | tail -3
timeout 200 .gpu/moescope check --preset deepseek-v3 > $OUT/check_dsv3.txt 2>&1; echo "rc=$?"; tail -1 $OUT/check_dsv3.txt
timeout 60 .gpu/moescope run --headless --steps 2 --backend cuda -t 128 > $OUT/run.jsonl; echo "rc=$?"
python3 -c "
import json
for l in open('$OUT/run.jsonl'):
    r=json.loads(l); print(r['step'], r['backend'], [(p['name'], p['contract']['message'], round(p['clean_us'] or 0,1)) for p in r['paths']], r['comparison']['output_rel_l2_ref'], r['comparison']['routing_agreement_ref'])
"
