#!/usr/bin/env bash
# Drives the real binary in tmux: starts it on the CPU backend, switches views, pauses, steps,
# opens the help and quits, checking the screen after each key and the exit status at the end.
# Usage: tests/tui_tmux.sh [path/to/moescope]   (tests/ui_tmux.rs runs it under cargo test)
set -euo pipefail

BIN=${1:-${MOESCOPE_BIN:-target/debug/moescope}}
if ! command -v tmux >/dev/null 2>&1; then
    echo "SKIP: tmux is not installed (apt-get install -y tmux)"
    exit 0
fi
if [ ! -x "$BIN" ]; then
    echo "FAIL: no moescope binary at $BIN" >&2
    exit 1
fi

# A private tmux server, so the test never touches the user's sessions.
SOCK="moescope-test-$$"
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

current_step() { screen | grep -Eo 'step [0-9]+ · T=' | head -1 | grep -Eo '[0-9]+'; }

tm new-session -d -s main -x 120 -y 40 \
    "$BIN --backend cpu --preset deepseek-v3 --tokens 4 --hidden 64 --intermediate 64 --telemetry-hz 0; echo \"EXIT=\$?\"; sleep 60"

wait_for '1 Overview' "the TUI to open"
wait_for 'step [0-9]+ · T=4' "the first step"
wait_for 'telemetry unavailable: telemetry off' "the telemetry notice"

tm send-keys -t main ' '
wait_for '⏸ paused' "space to pause"

tm send-keys -t main 2
wait_for 'cumulative, steps' "view 2 (expert load)"
wait_for 'balancedness' "the imbalance figures"

before=$(current_step)
tm send-keys -t main n
wait_for "step $((before + 1)) · T=" "n to run one step after step $before"

tm send-keys -t main Right
wait_for "step $((before + 2)) · T=" "→ to run one step"

tm send-keys -t main 4
wait_for 'timeline of step' "view 4 (kernel timings)"

tm send-keys -t main Tab
wait_for 'token drill-down' "Tab to view 5 (numerics)"

tm send-keys -t main 3
wait_for 'verdict per step' "view 3 (contract)"

tm send-keys -t main 6
wait_for 'telemetry unavailable' "view 6 (telemetry)"

tm send-keys -t main '?'
wait_for 'keys \(live\)' "the help overlay"
tm send-keys -t main Escape

tm send-keys -t main '+'
wait_for 'tokens per step → 8' "+ to double the tokens"
tm send-keys -t main n
wait_for 'step [0-9]+ · T=8' "a step with 8 tokens"

tm send-keys -t main q
wait_for '^EXIT=0' "q to quit with status 0"
# The alternate screen is gone: the TUI's tabs are no longer on the screen.
if screen | grep -q '1 Overview'; then
    echo "FAIL: the terminal was not restored" >&2
    screen >&2
    exit 1
fi
echo "OK: tmux drive of $BIN passed"
