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

# A fresh server: killing only the session raced with the new one taking its name.
restart_server() {
    tm kill-server >/dev/null 2>&1 || true
    # A new socket each time: a command sent while the old server is still going away would
    # reach it and fail with "server exited unexpectedly".
    SERVERS=$((${SERVERS:-0} + 1))
    SOCK="moescope-test-$$-$SERVERS"
}

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

# The step on screen once it stops changing: a step in flight when pausing still arrives.
settled_step() {
    local a b
    a=$(current_step)
    while sleep 0.5; b=$(current_step); [ "$a" != "$b" ]; do
        a=$b
    done
    echo "$a"
}

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

before=$(settled_step)
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

tm send-keys -t main 7
wait_for 'run with --ep N' "view 7 (EP) to say how to get EP figures"

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
# A bad option found while the engine is built: the TUI closes, the terminal is restored and
# the error is printed on the normal screen with a non-zero exit.
restart_server
tm new-session -d -s main -x 120 -y 40 \
    "$BIN --backend cpu --preset no-such-model; echo \"EXIT=\$?\"; sleep 60"
wait_for '^EXIT=1' "a failed engine build to exit with status 1"
wait_for 'moescope: error: .*no-such-model' "the error message after the restore"
if screen | grep -q '1 Overview'; then
    echo "FAIL: the terminal was not restored after the error" >&2
    screen >&2
    exit 1
fi
# Replay: record a short headless session, then step through it in the TUI. Skipped where this
# build cannot record yet.
DIR=$(mktemp -d)
trap 'tm kill-server >/dev/null 2>&1 || true; rm -rf "$DIR"' EXIT
if "$BIN" --headless --backend cpu --preset deepseek-v3 --tokens 4 --hidden 64 --intermediate 64 \
    --telemetry-hz 0 --steps 12 --record "$DIR/s.jsonl" >/dev/null 2>"$DIR/err" \
    && [ -s "$DIR/s.jsonl" ]; then
    restart_server
    tm new-session -d -s main -x 120 -y 40 "$BIN replay $DIR/s.jsonl; echo \"EXIT=\$?\"; sleep 60"
    wait_for 'pos 0/11' "the replay to open at position 0"
    tm send-keys -t main End
    wait_for 'step 11 · T=4 .*pos 11/11' "End to jump to the last step"
    tm send-keys -t main p
    wait_for 'pos 10/11' "p to step back"
    tm send-keys -t main g 3 Enter
    wait_for 'step 3 · T=4 .*pos 3/11' "g 3 Enter to jump to position 3"
    tm send-keys -t main ']' ']' ' '
    wait_for 'pos 11/11 ×4' "space to play to the end at ×4"
    tm send-keys -t main q
    wait_for '^EXIT=0' "q to quit the replay with status 0"
else
    echo "SKIP replay: this build did not record a session ($(head -c 200 "$DIR/err"))"
fi
# A routing trace with expert parallelism: view 7 shows the ranks and the what-if line.
TRACE="$(dirname "$0")/data/routing/deepseek-v3-skew.safetensors"
tm kill-session -t main
tm new-session -d -s main -x 120 -y 40 \
    "$BIN --backend cpu --preset deepseek-v3 --hidden 64 --intermediate 64 --telemetry-hz 0 --routing $TRACE --ep 8 --redundant 8; echo \"EXIT=\$?\"; sleep 60"
wait_for 'step [0-9]+ · T=64' "a step of the trace's 64 tokens"
tm send-keys -t main 7
wait_for '◀ max' "view 7 (EP) with the straggler marked"
wait_for 'rebalancing from the last [0-9]+ steps would' "the what-if line"
tm send-keys -t main q
wait_for '^EXIT=0' "q to quit the EP run with status 0"
echo "OK: tmux drive of $BIN passed"
