#!/bin/bash
# Lead, run 13: the final main (router v5 merged, shared kernel helpers, parallel f64 reference):
# check --all, route on every golden file, the full bench, full-layer headless step wall time.
set -o pipefail
cd "$(dirname "$0")/../.."
B=$PWD/.gpu/moescope
nvidia-smi -L; date -u
echo "== check --all"
timeout 300 $B check --all > $OUT/check_all-run13.txt 2>&1; echo "rc=$?"; grep -v " ok" $OUT/check_all-run13.txt | tail -5
echo "== route: cuda vs cpu JSON"
for f in tests/data/golden/*.safetensors; do
  n=$(basename $f .safetensors); p=${n%-*}
  $B route --backend cuda --preset $p --logits $f | grep -v '"backend"' > /tmp/g.json
  $B route --backend cpu --preset $p --logits $f | grep -v '"backend"' > /tmp/c.json
  cmp -s /tmp/g.json /tmp/c.json && echo "$n identical" || echo "$n DIFFERENT"
done
echo "== headless full DeepSeek-V3 layer, T=256"
$B run --headless --backend cuda --preset deepseek-v3 --tokens 256 --steps 6 > $OUT/headless-run13.jsonl
python3 -c "
import json,sys
rs=[json.loads(l) for l in open(sys.argv[1])]
print('wall ms/step', [round(r['wall_us']/1e3) for r in rs]); print([(p['name'], p['contract']['message'], round(p['total_us']), round(p['clean_us'])) for p in rs[-1]['paths']])" $OUT/headless-run13.jsonl
echo "== bench"
timeout 200 $B bench 2>&1 | tee $OUT/bench-run13.txt | tail -40
