#!/usr/bin/env bash
# Replays a three-path session (A, B and path C, a user kernel) in the real TUI under tmux and
# goes through every view, checking that each names path C by its kernel's file; then a live
# CPU run with path B on bf16 router logits.
# Usage: tests/tui_tmux_three.sh path/to/moescope SESSION.jsonl   (tests/ui_tmux.rs writes the
# session from the fixtures and runs it under cargo test)
set -euo pipefail

BIN=$1
SESSION=$2
if ! command -v tmux >/dev/null 2>&1; then
    echo "SKIP: tmux is not installed (apt-get install -y tmux)"
    exit 0
fi

SOCK="moescope-three-$$"
tm() { tmux -L "$SOCK" "$@"; }
trap 'tm kill-server >/dev/null 2>&1 || true' EXIT
screen() { tm capture-pane -p -t main; }

# wait_for PATTERN WHAT: polls the screen up to 30 s for an extended regex.
wait_for() {
    local i
    for i in $(seq 1 300); do
        if screen | grep -Eq -- "$1"; then
            return 0
        fi
        sleep 0.1
    done
    echo "FAIL: waited for $2 (/$1/); the screen was:" >&2
    screen >&2
    exit 1
}

tm new-session -d -s main -x 120 -y 40 "$BIN replay $SESSION; echo \"EXIT=\$?\"; sleep 60"
wait_for 'pos 0/' "the replay to open"
wait_for 'A unfused  B fused  C fused_router\.cu' "the header to name the three paths"
tm send-keys -t main End
wait_for 'pos 11/11' "End to jump to the last step"

wait_for 'C fused_router\.cu +[0-9.]+ µs' "view 1 (overview): path C's time"
wait_for 'routing C fused_router\.cu = ref' "view 1: path C's routing agreement"

tm send-keys -t main 2
wait_for 'C fused_router\.cu  \(h/l\)' "view 2 (expert load): the path selector"
tm send-keys -t main l l
wait_for '\(h/l\)  user kernel fused_router\.cu' "l to show path C's load"

tm send-keys -t main 3
wait_for 'path C fused_router\.cu · step 11' "view 3 (contract): path C's block"
wait_for 'C fused_router\.cu [0-9]+/[0-9]+ broken' "view 3: path C's verdict history"

tm send-keys -t main 4
wait_for 'path C · user kernel fused_router\.cu' "view 4 (kernels): path C's table"
wait_for 'router_user' "view 4: the user kernel's timing"

tm send-keys -t main 5
wait_for 'C fused_router\.cu output rel L2 vs ref' "view 5 (numerics): path C's history"
wait_for 'path C fused_router\.cu' "view 5: path C's drill-down column"

tm send-keys -t main 6
wait_for 'GPU utilization' "view 6 (telemetry)"
wait_for 'C fused_router\.cu' "view 6: the header names path C"

tm send-keys -t main 7
wait_for 'run with --ep N' "view 7 (EP)"

tm send-keys -t main q
wait_for '^EXIT=0' "q to quit the replay with status 0"

# Live on the CPU with path B on bf16 router logits: the header and the numerics view say so.
tm kill-server >/dev/null 2>&1 || true
SOCK="moescope-three-$$-live"
tm new-session -d -s main -x 120 -y 40 \
    "$BIN --backend cpu --preset deepseek-v3 --tokens 256 --hidden 64 --intermediate 64 --telemetry-hz 0 --router-logits B=bf16; echo \"EXIT=\$?\"; sleep 60"
wait_for 'step [0-9]+ · T=256' "the live run's first step"
wait_for 'B: fused router \+ fused slot, rsf on-output, bf16 logits|B bf16 fused' "the header to show B on bf16 logits"
tm send-keys -t main 5
wait_for 'B bf16' "view 5 (numerics): path B's column named bf16"
wait_for 'tokens ≠ reference +0 +[1-9][0-9]*' "view 5: the tokens path B routes elsewhere"
tm send-keys -t main q
wait_for '^EXIT=0' "q to quit the live run with status 0"
echo "OK: tmux replay of a three-path session and a live bf16 run passed"
