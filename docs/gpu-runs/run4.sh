#!/bin/bash
# Helper cuda, run 4: fused router with 8 experts per lane for E <= 256; launch floor; full checks.
set -o pipefail
cd "$(dirname "$0")/.."
B=.gpu/moescope
echo "== bench router (deepseek-v3, kimi-k2)"
timeout 100 $B bench --router-only 2>&1 | tee $OUT/bench_router_dsv3.txt; echo "rc=$?"
timeout 100 $B bench --router-only --preset kimi-k2 --router-tokens 1,64,8192,40000 2>&1 | tee $OUT/bench_router_kimi.txt; echo "rc=$?"
echo "== check --all"
timeout 330 $B check --all > $OUT/check_all.txt 2>&1; echo "rc=$?"
grep -v " ok" $OUT/check_all.txt | tail -20
echo "== headless run, both paths, variant rsf-twice, 3 steps"
timeout 60 $B run --headless --steps 3 --backend cuda -t 256 --variant rsf-twice > $OUT/run_dsv3.jsonl; echo "rc=$?"
python3 -c "
import json
for l in open('$OUT/run_dsv3.jsonl'):
    r=json.loads(l); print(r['step'], r['backend'], [ (p['name'], p['contract']['message'], round(p['total_us'],1), round(p['clean_us'] or 0,1)) for p in r['paths']], r['comparison']['output_rel_l2_ref'])
"
