#!/bin/bash
# Lead, run 9: merged main on an H100 — GPU tests, telemetry, the TUI on the CUDA backend in tmux,
# and the sample sessions (full DeepSeek-V3 layer: default paths, and the shared-inv-rsf bug).
set -o pipefail
cd "$(dirname "$0")/../.."
B=$PWD/.gpu/moescope
nvidia-smi -L; date -u
# Test binaries run the CLI through the path it had at build time.
mkdir -p /work/main/target/release && ln -sf "$B" /work/main/target/release/moescope 2>/dev/null
echo "== GPU tests"
.gpu/cuda_backend_test --test-threads 1 2>&1 | tail -4
.gpu/cuda_checkpoint_test 2>&1 | tail -3
.gpu/lib_test telemetry --nocapture 2>&1 | tail -4
echo "== TUI on CUDA in tmux"
command -v tmux >/dev/null || { export LD_LIBRARY_PATH=$PWD/.gpu/tmux; TM=$PWD/.gpu/tmux/tmux; }
TM=${TM:-tmux}
$TM new-session -d -s m -x 150 -y 45 "$B --backend cuda --preset deepseek-v3 --tokens 256 2>$OUT/tui-stderr.txt; echo EXIT \$? > $OUT/tui-exit.txt; sleep 5"
sleep 25; $TM capture-pane -p -t m > $OUT/tui-1-overview.txt
$TM send-keys -t m 4; sleep 3; $TM capture-pane -p -t m > $OUT/tui-4-kernels.txt
$TM send-keys -t m 6; sleep 3; $TM capture-pane -p -t m >> $OUT/tui-4-kernels.txt
$TM send-keys -t m v; sleep 1; $TM send-keys -t m j; $TM send-keys -t m Enter; sleep 8; $TM send-keys -t m 3; sleep 2; $TM capture-pane -p -t m >> $OUT/tui-4-kernels.txt
$TM send-keys -t m q; sleep 2; cat $OUT/tui-exit.txt 2>/dev/null; head -3 $OUT/tui-1-overview.txt
echo "== sessions"
S=$OUT
time $B run --headless --backend cuda --preset deepseek-v3 --tokens 256 --steps 80 --record $S/h100-deepseek-v3-t256-correct.jsonl > /dev/null
time $B run --headless --backend cuda --preset deepseek-v3 --tokens 256 --steps 40 --variant shared-inv-rsf --record $S/h100-deepseek-v3-t256-shared-inv-rsf.jsonl > /dev/null
ls -la $S
