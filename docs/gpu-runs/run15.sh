#!/bin/bash
# Lead, run 15: the final binary — telemetry now attached by the Engine, session header from the
# weight source; kimi-k2 checks (router v5 at E = 384).
set -o pipefail
cd "$(dirname "$0")/../.."
B=$PWD/.gpu/moescope
nvidia-smi -L; date -u
timeout 120 $B check --preset kimi-k2 > $OUT/check_kimi-k2-run15.txt 2>&1; echo "kimi-k2 rc=$?: $(tail -1 $OUT/check_kimi-k2-run15.txt)"
$B run --headless --backend cuda --preset kimi-k2 --tokens 128 --steps 4 --variant rsf-twice --record $OUT/kimi-run15.jsonl > /dev/null
python3 -c "
import json,sys
lines=open(sys.argv[1]).read().splitlines(); h=json.loads(lines[0]); print('header:', h['backend'], h['device'], '|', h['weights'])
for l in lines[1:]:
    r=json.loads(l); t=r['telemetry']
    print(r['step'], [(p['name'], p['contract']['message']) for p in r['paths']], 'telemetry:', t and (t['gpu_util_pct'], t['mem_used_mib'], t['power_w'], t['sm_clock_mhz'], t['gpm_sm_occupancy_pct']))" $OUT/kimi-run15.jsonl
